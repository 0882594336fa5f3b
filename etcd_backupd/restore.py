"""Restoring: which backup, which of etcd's tools, and etcd's own restore run on a verified
snapshot."""

from __future__ import annotations

import difflib
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .compression import plain_snapshot
from .encryption import Identity
from .errors import BackupError, SnapshotInvalid
from .formats import SNAPSHOT_SUFFIX, base_name
from .fsutil import inside
from .manifest import SNAPSHOT_PREFIX, Cluster, Manifest, parse_snapshot_name
from .retention import is_future
from .snapshot.status import SnapshotStatus, verify_snapshot

if TYPE_CHECKING:
    from .destinations import Destination

log = logging.getLogger(__name__)

# etcd's revisions are int64
MAX_REVISION = (1 << 63) - 1


# Which tool restores what (etcd's changelogs of 3.5 and 3.6, in its CHANGELOG directory): etcdutl
# arrived in 3.5 and is the only offline tool from 3.6, which removed `etcdctl snapshot restore`
# (etcd PR 13809); 3.5 deprecated that etcdctl command, so etcdctl restores only for 3.4.
# `--bump-revision` and `--mark-compacted` came in etcdutl 3.5.10 and 3.6.0, each refused without
# the other (etcdutl/etcdutl/snapshot_command.go, release-3.6).
RESTORE_TOOLS = ("etcdutl", "etcdctl")
BUMP_FLAGS = ("--bump-revision", "--mark-compacted")
# seconds a tool may take to print its version or its help
PROBE_TIMEOUT = 30.0
_DETAIL_LIMIT = 300
# the first line of `etcdutl version` and `etcdctl version` (etcdutl/etcdutl/version_command.go)
_TOOL_VERSION = re.compile(r"^(etcdutl|etcdctl) version: (\d+)\.(\d+)\.(\d+)", re.MULTILINE)
_FLAG = re.compile(r"--[a-z][a-z-]*")
_MAJOR_MINOR = re.compile(r"(\d+)\.(\d+)\.")


@dataclass(frozen=True)
class EtcdTools:
    """etcd's binaries as found: the restore candidates (every etcdutl, then every etcdctl, in
    PATH order), and etcd and etcdctl for drills."""

    candidates: tuple[Path, ...]
    etcd: Path | None
    etcdctl: Path | None
    where: str


@dataclass(frozen=True)
class RestoreTool:
    """A restore tool that ran: its kind and version as it printed them, and the flags its
    `snapshot restore --help` advertises."""

    path: Path
    kind: str
    version: tuple[int, int, int]
    flags: frozenset[str]

    @property
    def description(self) -> str:
        return f"{self.kind} {'.'.join(map(str, self.version))} ({self.path})"


def find_tools(bin_dir: Path | None = None) -> EtcdTools:
    def locate(name: str) -> list[Path]:
        directories = [bin_dir] if bin_dir is not None else _path_directories()
        found: dict[Path, Path] = {}
        for directory in directories:
            candidate = directory / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                # /bin and /usr/bin are one directory on merged-/usr systems
                found.setdefault(candidate.resolve(), candidate)
        return list(found.values())

    where = f"in {bin_dir}" if bin_dir else "on PATH"
    candidates = tuple(path for name in RESTORE_TOOLS for path in locate(name))
    if not candidates:
        raise BackupError(
            f"no etcdutl or etcdctl found {where}: install etcd's tools (the same version as the "
            "cluster) or name their directory with --etcd-bin-dir"
        )
    etcd, etcdctl = (next(iter(locate(name)), None) for name in ("etcd", "etcdctl"))
    return EtcdTools(candidates, etcd, etcdctl, where)


def _path_directories() -> list[Path]:
    return [Path(entry) for entry in os.environ.get("PATH", os.defpath).split(os.pathsep) if entry]


def _run_tool(path: Path, *args: str) -> subprocess.CompletedProcess[str] | str:
    """The tool's answer, or why it did not run."""
    try:
        result = subprocess.run(
            [str(path), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=PROBE_TIMEOUT,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {PROBE_TIMEOUT:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        # the last line says why; a tool gone wrong may print anything, at any length
        return lines[-1][:_DETAIL_LIMIT] if lines else f"exit status {result.returncode}"
    return result


def probe_tool(path: Path) -> RestoreTool | str:
    """The restore tool at `path` as it describes itself, or why it cannot be used."""
    answer = _run_tool(path, "version")
    if isinstance(answer, str):
        return f"found {path} but it does not run: {answer}"
    match = _TOOL_VERSION.search(answer.stdout)
    if match is None:
        return f"found {path} but it does not run as etcdutl or etcdctl: no version line"
    kind, version = match[1], (int(match[2]), int(match[3]), int(match[4]))
    shown = ".".join(map(str, version))
    if kind == "etcdctl" and version >= (3, 6, 0):
        return f"etcdctl {shown} ({path}) has no snapshot restore: etcd 3.6 moved it to etcdutl"
    if kind == "etcdctl" and version >= (3, 5, 0):
        return f"etcdctl {shown} ({path}) is not used: etcd 3.5 restores with etcdutl"
    helped = _run_tool(path, "snapshot", "restore", "--help")
    if isinstance(helped, str):
        return f"found {path} but its snapshot restore --help does not run: {helped}"
    flags = frozenset(_FLAG.findall(helped.stdout + helped.stderr))
    return RestoreTool(path, kind, version, flags)


def restore_tool(
    tools: EtcdTools, storage_version: str | None, *, bump: bool, etcd_version: str | None = None
) -> RestoreTool:
    """The first candidate that runs, is not older than the snapshot's storage version, and
    takes --bump-revision and --mark-compacted when `bump`. A snapshot its manifest says a 3.4
    member served (`etcd_version`) tries 3.4's own etcdctl first. A candidate passed over is
    logged with the reason; when none is left, the reasons are the error."""
    needed = _MAJOR_MINOR.match(storage_version or "")
    candidates = list(tools.candidates)
    if (etcd_version or "").startswith("3.4."):
        candidates.sort(key=lambda path: path.name != "etcdctl")
    reasons = []
    for path in candidates:
        tool = probe_tool(path)
        if isinstance(tool, str):
            reason = tool
        elif needed is not None and tool.version[:2] < (int(needed[1]), int(needed[2])):
            reason = (
                f"{tool.description} is older than the snapshot's storage version "
                f"{storage_version}: restore it with etcdutl {needed[1]}.{needed[2]} or newer"
            )
        elif bump and not tool.flags.issuperset(BUMP_FLAGS):
            reason = (
                f"{tool.description} has no --bump-revision and --mark-compacted (etcdutl has "
                "them from 3.5.10): restore without them, or with etcdutl 3.5.10 or newer"
            )
        else:
            return tool
        log.warning("%s", reason)
        reasons.append(reason)
    raise BackupError(
        f"no etcdutl or etcdctl {tools.where} can restore this snapshot: " + "; ".join(reasons)
    )


def restore_token(snapshot_name: str) -> str:
    """The restored cluster's token, from the snapshot's name alone: every member restoring one
    snapshot gets the same token, however separately its command or script was made."""
    base = base_name(Path(snapshot_name).name).removesuffix(SNAPSHOT_SUFFIX)
    base = base.removeprefix(SNAPSHOT_PREFIX)
    return "etcd-restore-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-") or "snapshot")


def find_snapshot(
    manifests: list[Manifest],
    wanted: str,
    destination: str,
    *,
    cluster: str | None,
    now: datetime,
) -> Manifest:
    """The backup called `wanted` ("latest", its stored name, or its name without the
    compression suffix); a miss names the closest stored names. "latest" is the newest backup of
    `cluster`, which must be named when the destination holds several clusters' backups."""
    if not manifests:
        raise BackupError(f"destination {destination!r} holds no backup")
    if wanted == "latest":
        return _latest(manifests, cluster, destination, now)
    for manifest in reversed(manifests):
        if wanted in (manifest.snapshot, base_name(manifest.snapshot)):
            return manifest
    names = [m.snapshot for m in manifests]
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.6)
    hint = (
        f"; did you mean {' or '.join(map(repr, close))}?"
        if close
        else (f"; the newest is {names[-1]!r} (or say latest)")
    )
    raise BackupError(f"no snapshot {wanted!r} in destination {destination!r}{hint}")


def _latest(
    manifests: list[Manifest], cluster: str | None, destination: str, now: datetime
) -> Manifest:
    if cluster is None:
        names = sorted({p[0] for m in manifests if (p := parse_snapshot_name(m.snapshot))})
        if len(names) > 1:
            raise BackupError(
                f"destination {destination!r} holds backups of several clusters "
                f"({', '.join(names)}): name one with --cluster"
            )
        cluster = names[0]
    newest = newest_backup(manifests, Cluster(cluster), now)
    if newest is None:
        raise BackupError(f"destination {destination!r} holds no backup of cluster {cluster}")
    return newest


@dataclass(frozen=True)
class Member:
    name: str
    peer_url: str
    data_dir: Path


def _non_empty(directory: Path) -> bool:
    return directory.exists() and (not directory.is_dir() or any(directory.iterdir()))


def check_data_dir(data_dir: Path, force: bool) -> None:
    if _non_empty(data_dir) and not force:
        raise BackupError(
            f"{data_dir} is not empty: refusing to overwrite it; stop etcd and pass --force to "
            "move it aside, or choose another --data-dir"
        )


def move_aside(data_dir: Path, now: datetime) -> Path | None:
    if not _non_empty(data_dir):
        return None
    aside = data_dir.with_name(f"{data_dir.name}.before-restore-{now:%Y%m%dT%H%M%SZ}")
    data_dir.rename(aside)
    log.info("moved %s aside to %s", data_dir, aside)
    return aside


def run_restore(
    snapshot: Path,
    member: Member,
    initial_cluster: str,
    token: str,
    tool: RestoreTool,
    bump_revision: int = 0,
) -> None:
    """Run the tool's snapshot restore; with `bump_revision`, the restored revision jumps by that
    much and is marked compacted, so that watchers of the old cluster re-list."""
    command = [
        str(tool.path),
        "snapshot",
        "restore",
        str(snapshot),
        f"--name={member.name}",
        f"--initial-cluster={initial_cluster}",
        f"--initial-cluster-token={token}",
        f"--initial-advertise-peer-urls={member.peer_url}",
        f"--data-dir={member.data_dir}",
    ]
    if bump_revision:
        command += [f"--bump-revision={bump_revision}", "--mark-compacted"]
    log.info("restoring with %s", tool.description)
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BackupError(
            f"{tool.description} snapshot restore failed: {detail[-1] if detail else '?'}"
        )


def restore(
    source: Path,
    member: Member,
    initial_cluster: str,
    token: str,
    tools: EtcdTools,
    *,
    force: bool,
    now: datetime,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    bump_revision: int = 0,
    etcd_version: str | None = None,
    identities: Sequence[Identity] = (),
) -> tuple[SnapshotStatus, RestoreTool]:
    """Verify, then restore; nothing on disk is touched unless the snapshot is sound and, when
    its manifest's digest is given, is the snapshot the manifest describes, and a tool here can
    restore it. A compressed file is decompressed to at most `expected_size` bytes, its
    manifest's size, when given; `etcd_version` is its manifest's too. An encrypted file is
    decrypted with `identities`."""
    check_data_dir(member.data_dir, force)
    log.info("restore step 1 of 2: decompressing and verifying %s", source.name)
    with plain_snapshot(source, size=expected_size, identities=identities) as plain:
        status = verify_snapshot(plain)
        if expected_sha256 is not None and status.sha256 != expected_sha256:
            raise SnapshotInvalid(
                f"{source.name} has SHA-256 {status.sha256}, but its manifest says "
                f"{expected_sha256}: it is not the snapshot the manifest describes"
            )
        if status.revision + bump_revision > MAX_REVISION:
            raise BackupError(
                f"--bump-revision {bump_revision} takes revision {status.revision} past etcd's "
                f"largest, {MAX_REVISION}"
            )
        tool = restore_tool(
            tools, status.storage_version, bump=bump_revision > 0, etcd_version=etcd_version
        )
        log.info("restore step 2 of 2: restoring into %s", member.data_dir)
        move_aside(member.data_dir, now)
        run_restore(plain, member, initial_cluster, token, tool, bump_revision)
    return status, tool


@dataclass(frozen=True)
class Restored:
    """A restore from a destination: the snapshot's figures, the tool that restored it and the
    cluster token it was restored with."""

    status: SnapshotStatus
    tool: RestoreTool
    token: str


def restore_from_destination(
    destination: Destination,
    wanted: str,
    member: Member,
    initial_cluster: str,
    tools: EtcdTools,
    *,
    token: str | None,
    cluster: str | None,
    force: bool,
    now: datetime,
    bump_revision: int = 0,
    identities: Sequence[Identity] = (),
) -> Restored:
    """Restore the backup `wanted` names (as find_snapshot takes it, of `cluster`) from the
    destination: fetched into a scratch directory, it is restored only if it is the snapshot its
    manifest describes (SHA-256 and size). Without a `token`, the snapshot's name gives it."""
    manifest = find_snapshot(
        destination.manifests(), wanted, destination.name, cluster=cluster, now=now
    )
    token = token or restore_token(manifest.snapshot)
    # refused before fetching what no tool here could restore
    restore_tool(
        tools,
        manifest.storage_version,
        bump=bump_revision > 0,
        etcd_version=manifest.etcd_version,
    )
    with tempfile.TemporaryDirectory(prefix="etcd-backupd-restore-") as scratch:
        fetched = destination.fetch(
            manifest.snapshot,
            inside(Path(scratch), manifest.snapshot),
            stored_sha256=manifest.stored_sha256,
        )
        status, tool = restore(
            fetched,
            member,
            initial_cluster,
            token,
            tools,
            force=force,
            now=now,
            expected_sha256=manifest.sha256,
            expected_size=manifest.size,
            bump_revision=bump_revision,
            etcd_version=manifest.etcd_version,
            identities=identities,
        )
    return Restored(status, tool, token)


def newest_backup(
    manifests: Sequence[Manifest], cluster: Cluster, now: datetime
) -> Manifest | None:
    """The cluster's newest backup; one dated in the future is never it."""
    ours = [m for m in manifests if cluster.owns(m) and not is_future(m.created, now)]
    return max(ours, key=lambda m: (m.created, m.snapshot), default=None)
