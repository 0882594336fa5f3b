"""Finding the etcd on this host, for `init --detect`: a kubeadm static pod manifest, a systemd
unit or environment file as kubeasz and distribution packages write them, or ETCDCTL_*
variables; and the commented config written from what was found.

Reads only the files it looks for, under `root`; every file is untrusted text: a flag it cannot
read is skipped, never an error."""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

KUBEADM_MANIFEST = "/etc/kubernetes/manifests/etcd.yaml"
SYSTEMD_UNITS = (
    "/etc/systemd/system/etcd.service",
    "/lib/systemd/system/etcd.service",
    "/usr/lib/systemd/system/etcd.service",
)
ENV_FILES = ("/etc/etcd/etcd.conf", "/etc/default/etcd")
DEFAULT_LISTEN = "http://localhost:2379"
# the files read are configuration, a few kB; a larger one is not what we look for
_MAX_BYTES = 1024 * 1024

# `- --flag=value` items of a YAML list (the container's command), quoted or not
_YAML_FLAG = re.compile(r"""^\s*-\s+(["']?)--([a-z0-9-]+)=(.*)\1\s*$""")
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Z_][A-Z0-9_]*)=(.*)$")

Layout = Literal["kubeadm", "systemd", "environment"]


@dataclass
class Detected:
    layout: Layout
    source: str  # what was read, for the config's header
    endpoints: list[str]
    local_endpoint: str | None
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    members: dict[str, str] = field(default_factory=dict)


@dataclass
class Detection:
    found: Detected | None
    report: list[str]  # what was looked for and found where, for stderr


def _read(root: Path, path: str) -> str | None:
    target = root / path.lstrip("/")
    try:
        if not target.is_file():
            return None
        with target.open("rb") as handle:
            return handle.read(_MAX_BYTES).decode(errors="replace")
    except OSError:
        return None


def _exists(root: Path, path: str) -> bool:
    return (root / path.lstrip("/")).is_file()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _client_url(url: str) -> str | None:
    """A URL a client on this host can reach the listener `url` at: an unspecified address
    (0.0.0.0, ::) becomes loopback, localhost becomes 127.0.0.1."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    try:
        port = parts.port or 2379
    except ValueError:
        return None
    host = parts.hostname
    if _is_unspecified(host) or host == "localhost":
        host = "127.0.0.1"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, "", "", ""))


def _urls(value: str | None) -> list[str]:
    found = []
    for item in (value or "").split(","):
        url = _client_url(item)
        if url is not None and url not in found:
            found.append(url)
    return found


def _loopback_first(urls: list[str]) -> list[str]:
    return sorted(urls, key=lambda url: not _is_loopback(urlsplit(url).hostname or ""))


def _members(initial_cluster: str | None) -> dict[str, str]:
    members = {}
    for item in (initial_cluster or "").split(","):
        name, sep, url = item.strip().partition("=")
        if sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) and _client_url(url):
            members[name] = url.strip()
    return members


def _from_flags(flags: Mapping[str, str], layout: Layout, source: str) -> Detected:
    """The member's own settings: it listens on --listen-client-urls, so a loopback one of them
    (or an unspecified address) reaches it from this host."""
    listen = _urls(flags.get("listen-client-urls") or DEFAULT_LISTEN)
    loopback = [u for u in listen if _is_loopback(urlsplit(u).hostname or "")]
    advertised = _urls(flags.get("advertise-client-urls"))
    chosen = loopback[:1] or [u for u in listen if u in advertised][:1] or listen[:1]
    return Detected(
        layout=layout,
        source=source,
        endpoints=chosen,
        local_endpoint=chosen[0] if chosen else None,
        cacert=flags.get("trusted-ca-file") or None,
        cert=flags.get("cert-file") or None,
        key=flags.get("key-file") or None,
        members=_members(flags.get("initial-cluster")),
    )


def _kubeadm(root: Path, report: list[str]) -> Detected | None:
    text = _read(root, KUBEADM_MANIFEST)
    if text is None:
        report.append(f"no kubeadm static pod manifest at {KUBEADM_MANIFEST}")
        return None
    flags: dict[str, str] = {}
    for line in text.splitlines():
        match = _YAML_FLAG.match(line)
        if match:
            flags.setdefault(match[2], match[3].strip())
    if not flags:
        report.append(f"{KUBEADM_MANIFEST} holds no etcd flags; skipped")
        return None
    report.append(f"found the kubeadm static pod manifest {KUBEADM_MANIFEST}")
    found = _from_flags(flags, "kubeadm", f"the kubeadm static pod manifest {KUBEADM_MANIFEST}")
    # the member's own --cert-file is a server certificate; kubeadm makes client certificates
    # signed by the etcd CA for exactly this: its health checks and the API server
    etcd_pki = PurePosixPath(found.cacert or "/etc/kubernetes/pki/etcd/ca.crt").parent
    candidates = [
        (etcd_pki / "healthcheck-client.crt", etcd_pki / "healthcheck-client.key"),
        (
            etcd_pki.parent / "apiserver-etcd-client.crt",
            etcd_pki.parent / "apiserver-etcd-client.key",
        ),
    ]
    for cert, key in candidates:
        if _exists(root, str(cert)) and _exists(root, str(key)):
            found.cert, found.key = str(cert), str(key)
            report.append(f"  client certificate: {cert} (made by kubeadm for etcd clients)")
            break
    else:
        report.append(
            f"  no kubeadm client certificate ({candidates[0][0]} or {candidates[1][0]}); "
            f"using the member's own {found.cert}, which may not allow client use"
        )
    return found


def _unit_lines(text: str) -> list[str]:
    """The unit's logical lines: a backslash at the end of a line continues it."""
    return re.sub(r"\\\s*\n", " ", text).splitlines()


def _exec_flags(command: str) -> dict[str, str]:
    try:
        words = shlex.split(command, comments=False)
    except ValueError:
        return {}
    flags: dict[str, str] = {}
    for index, word in enumerate(words):
        if not word.startswith("--"):
            continue
        name, sep, value = word[2:].partition("=")
        if not sep:
            following = words[index + 1] if index + 1 < len(words) else ""
            value = "" if following.startswith("--") else following
        flags.setdefault(name, value)
    return flags


def _env_values(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        match = _ENV_LINE.match(line)
        if match is None:
            continue
        value = match[2].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[match[1]] = value
    return values


def _etcd_env_flags(values: Mapping[str, str]) -> dict[str, str]:
    """etcd's ETCD_LISTEN_CLIENT_URLS and the like, as the flags they stand for."""
    return {
        name.removeprefix("ETCD_").lower().replace("_", "-"): value
        for name, value in values.items()
        if name.startswith("ETCD_") and value
    }


def _systemd(root: Path, report: list[str]) -> Detected | None:
    for unit in SYSTEMD_UNITS:
        text = _read(root, unit)
        if text is None:
            continue
        flags = _unit_flags(root, text, report)
        report.append(f"found the etcd unit {unit}")
        return _from_flags(flags, "systemd", f"the systemd unit {unit}")
    report.append(f"no etcd unit at {', '.join(SYSTEMD_UNITS)}")
    for path in ENV_FILES:
        content = _read(root, path)
        if content is None:
            continue
        flags = _etcd_env_flags(_env_values(content))
        if flags:
            report.append(f"found etcd's environment file {path}")
            return _from_flags(flags, "systemd", f"the environment file {path}")
    report.append(f"no etcd environment file at {', '.join(ENV_FILES)}")
    return None


def _unit_flags(root: Path, text: str, report: list[str]) -> dict[str, str]:
    """etcd's flags as a unit sets them: its environment, overridden by ExecStart's flags."""
    flags: dict[str, str] = {}
    env: dict[str, str] = {}
    env_files = []
    for line in _unit_lines(text):
        key, sep, value = line.strip().partition("=")
        if not sep:
            continue
        if key == "ExecStart":
            flags = _exec_flags(value.lstrip("-@:+!"))
        elif key == "Environment":
            for assignment in shlex.split(value) if value else []:
                env.update(_env_values(assignment))
        elif key == "EnvironmentFile":
            env_files.append(value.strip().lstrip("-"))
    for path in env_files:
        content = _read(root, path)
        if content is not None:
            report.append(f"  environment file {path}")
            env.update(_env_values(content))
    return {**_etcd_env_flags(env), **flags}


def _environment(environ: Mapping[str, str], report: list[str]) -> Detected | None:
    raw = environ.get("ETCDCTL_ENDPOINTS", "")
    if not raw.strip():
        report.append("no ETCDCTL_ENDPOINTS in the environment")
        return None
    cacert = environ.get("ETCDCTL_CACERT") or environ.get("ETCDCTL_CA_FILE") or None
    scheme = "https" if cacert else "http"
    # etcdctl takes endpoints without a scheme, as host:port
    endpoints = _loopback_first(
        _urls(",".join(e if "://" in e else f"{scheme}://{e}" for e in raw.split(",")))
    )
    if not endpoints:
        report.append(f"ETCDCTL_ENDPOINTS={raw!r} holds no usable URL")
        return None
    report.append("found ETCDCTL_* variables in the environment")
    user = environ.get("ETCDCTL_USER", "").partition(":")[0] or None
    if user:
        report.append(
            f"  ETCDCTL_USER names the etcd user {user!r}: put its password in a file and "
            "uncomment username and password_file in [etcd]"
        )
    local = endpoints[0] if _is_loopback(urlsplit(endpoints[0]).hostname or "") else None
    return Detected(
        layout="environment",
        source="the ETCDCTL_* variables of the environment",
        endpoints=endpoints,
        local_endpoint=local,
        cacert=cacert,
        cert=environ.get("ETCDCTL_CERT") or environ.get("ETCDCTL_CERT_FILE") or None,
        key=environ.get("ETCDCTL_KEY") or environ.get("ETCDCTL_KEY_FILE") or None,
        username=user,
    )


def detect(root: Path, environ: Mapping[str, str]) -> Detection:
    """The first source that names etcd's client URLs, in order: kubeadm, systemd, ETCDCTL_*."""
    report: list[str] = []
    found = _kubeadm(root, report) or _systemd(root, report) or _environment(environ, report)
    if found is not None and found.endpoints:
        for label, path in (("cacert", found.cacert), ("cert", found.cert), ("key", found.key)):
            if path is not None and not _exists(root, path):
                report.append(f"  note: {label} {path} does not exist under {root}")
    return Detection(found, report)


def _toml(value: str) -> str:
    # TOML basic strings take JSON's escapes for the characters a path or URL can hold
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped) + '"'


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_toml(v) for v in values) + "]"


def render(found: Detected | None, *, host: str, now: datetime) -> str:
    """A commented config for what was found (or for etcd's defaults when nothing was)."""
    endpoints = found.endpoints if found else ["http://127.0.0.1:2379"]
    https = any(e.startswith("https://") for e in endpoints)
    lines = [
        "# etcd-backupd configuration, written by `etcd-backupd init"
        + (" --detect`" if found else "`")
        + f" on {host} at {now:%Y-%m-%d %H:%M:%SZ}",
        f"# from {found.source}." if found else "# (nothing detected: etcd's defaults).",
        "# Check it with `etcd-backupd check-config --config FILE`; config.example.toml describes",
        "# every option.",
        "",
        "# The daemon's own files: its lock, the drill records `status` reads, and a spool when no",
        "# local destination can take a snapshot stream.",
        'state_dir = "/var/lib/etcd-backupd"',
        "",
        "[etcd]",
        "# The member on this host, over loopback where it listens there. Add the other members'",
        "# client URLs to back up from them while this one is down.",
        f"endpoints = {_list(endpoints)}",
    ]
    if found and found.local_endpoint:
        lines += [
            "# This host's member: when every member's host runs etcd-backupd with this set, the",
            "# host whose member leads takes each snapshot and the others stand by.",
            f"local_endpoint = {_toml(found.local_endpoint)}",
        ]
    tls = [("cacert", found.cacert if found else None)]
    tls += [("cert", found.cert if found else None), ("key", found.key if found else None)]
    if any(path for _, path in tls):
        comment = "" if https else "# "
        lines.append(
            "# TLS: etcd's CA and a client certificate it signed."
            + ("" if https else " Needed only for https:// endpoints.")
        )
        lines += [f"{comment}{name} = {_toml(path)}" for name, path in tls if path]
        if found and found.layout == "kubeadm":
            lines += [
                "# kubeadm's keys are root's alone: the etcd-backupd.service unit, which runs as",
                "# its own user, reads them through the kubeadm.conf drop-in, as these instead:",
                '# cacert = "/run/credentials/etcd-backupd.service/etcd-ca.crt"',
                '# cert = "/run/credentials/etcd-backupd.service/etcd-client.crt"',
                '# key = "/run/credentials/etcd-backupd.service/etcd-client.key"',
            ]
    if found and found.username:
        lines += [
            "# etcd auth: put the password in password_file (mode 0600), or in the environment",
            "# variable ETCD_BACKUPD_ETCD_PASSWORD, never here; then uncomment both lines.",
            f"# username = {_toml(found.username)}",
            '# password_file = "/etc/etcd-backupd/etcd-password"',
        ]
    lines += [
        "# The name in snapshot file names; the cluster ID (hex) when unset.",
        '# cluster_name = "prod"',
        "",
        "[schedule]",
        "# Five-field cron expressions, read as cron reads them, in timezone.",
        'cron = "0 */6 * * *"',
        'timezone = "UTC"',
        "",
        "[[destination]]",
        'name = "local"',
        'type = "local"',
        "# Keep a copy off this host too: add an S3 destination (see config.example.toml).",
        'path = "/var/backups/etcd"',
        "",
        "[retention]",
        "keep_last = 8",
        "keep_daily = 7",
        "keep_weekly = 4",
    ]
    members = found.members if found else {}
    if members:
        lines += [
            "",
            "[restore]",
            "# The members etcd was started with (--initial-cluster), for `restore-plan`; check",
            "# that they are all of today's members.",
            "# members = { "
            + ", ".join(f"{name} = {_toml(url)}" for name, url in members.items())
            + " }",
        ]
    return "\n".join(lines) + "\n"
