"""Restoring: etcd's own restore run on a verified snapshot, the disaster-recovery runbook, and
restore drills that prove on a schedule that the backups restore."""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .clock import SYSTEM_CLOCK, Clock
from .compression import plain_snapshot
from .config import ENV_ETCD_PASSWORD
from .destinations import Destination
from .encryption import Identity
from .errors import BackupError, ExitCode, IdentityError, SnapshotInvalid
from .formats import SNAPSHOT_SUFFIX, base_name
from .fsutil import inside
from .manifest import SNAPSHOT_PREFIX, Cluster, Manifest, parse_snapshot_name
from .retention import is_future
from .snapshot.keyspace import auth_enabled
from .snapshot.status import SnapshotStatus, read_storage_version, verify_snapshot

log = logging.getLogger(__name__)

# a drill's throwaway member must answer within this long after it starts
DRILL_START_TIMEOUT = 120.0
DRILL_POLL_INTERVAL = 0.05
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
    """The backup called `wanted` ("latest", its stored name, or its name without the suffix
    of its stored format); a miss names the closest stored names. "latest" is the newest backup of
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
class DrillResult:
    destination: str
    snapshot: str
    ok: bool
    seconds: float
    error: str | None = None
    # IDENTITY when the backup is encrypted and no identity given opens it
    exit_code: ExitCode = ExitCode.DRILL_FAILED


# The throwaway member serves the restored keyspace (every Secret of the cluster) on unix sockets
# in the drill's 0700 scratch directory, never on a TCP port another local user could reach.
# etcd wants host:port even in a unix URL and takes it as the socket's file name, relative to
# its working directory.
DRILL_CLIENT_URL = "unix://drill-client:2379"
DRILL_PEER_URL = "unix://drill-peer:2380"

Credentials = Callable[[], tuple[str | None, str | None]]


def _no_credentials() -> tuple[str | None, str | None]:
    return None, None


@dataclass(frozen=True)
class _Throwaway:
    """etcdctl pointed at the drill's member, from its scratch directory, with the credentials
    the restored cluster asks for (in the environment: a command line is visible to all)."""

    etcdctl: Path
    work: Path
    env: dict[str, str]

    def run(self, *args: str) -> str:
        result = subprocess.run(
            [str(self.etcdctl), f"--endpoints={DRILL_CLIENT_URL}", "--command-timeout=30s", *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.work,
            env={**os.environ, "ETCDCTL_API": "3", **self.env},
        )
        if result.returncode != 0:
            detail = " ".join(result.stderr.split())[-300:]
            raise BackupError(f"etcdctl {' '.join(args)}: {detail}")
        return result.stdout

    def count(self, prefix: str) -> int:
        # the JSON response counts the whole range whatever the limit
        output = self.run("get", prefix, "--prefix", "--limit=1", "-w", "json")
        count: int = json.loads(output).get("count", 0)
        return count


def _etcdctl_env(plain: Path, credentials: Credentials) -> dict[str, str]:
    """What etcdctl needs to read a cluster restored from `plain`: the configured user where the
    snapshot's cluster has auth enabled (a restore keeps its users and roles)."""
    if not auth_enabled(plain):
        return {}
    user, password = credentials()
    if not user or not password:
        raise BackupError(
            "the snapshot's cluster has auth enabled: set etcd.username and etcd.password_file "
            f"(or {ENV_ETCD_PASSWORD}) so that the drill can read the restored keys"
        )
    return {"ETCDCTL_USER": f"{user}:{password}"}


def newest_backup(
    manifests: Sequence[Manifest], cluster: Cluster, now: datetime
) -> Manifest | None:
    """The cluster's newest backup; one dated in the future is never it."""
    ours = [m for m in manifests if cluster.owns(m) and not is_future(m.created, now)]
    return max(ours, key=lambda m: (m.created, m.snapshot), default=None)


def drill(
    destination: Destination,
    tools: EtcdTools,
    expect_prefixes: list[str],
    *,
    cluster: Cluster,
    now: datetime,
    scratch_root: Path | None = None,
    credentials: Credentials = _no_credentials,
    clock: Clock = SYSTEM_CLOCK,
    identities: Sequence[Identity] = (),
) -> DrillResult:
    """Restore the cluster's newest backup in the destination into a throwaway member and
    check it. `credentials` gives etcd's user and password, asked for only when the
    snapshot's cluster has auth enabled; `identities` decrypt an encrypted backup."""
    began = clock.monotonic()
    try:
        newest = newest_backup(destination.manifests(), cluster, now)
    except BackupError as exc:
        return DrillResult(destination.name, "", False, 0.0, str(exc))
    if newest is None:
        return DrillResult(
            destination.name,
            "",
            False,
            0.0,
            f"the destination holds no backup of cluster {cluster.name}",
        )
    try:
        _drill_one(
            destination, newest, tools, expect_prefixes, scratch_root, credentials, identities
        )
    except BackupError as exc:
        log.error("drill of %s from %s failed: %s", newest.snapshot, destination.name, exc)
        return DrillResult(
            destination.name,
            newest.snapshot,
            False,
            clock.monotonic() - began,
            str(exc),
            ExitCode.IDENTITY if isinstance(exc, IdentityError) else ExitCode.DRILL_FAILED,
        )
    seconds = clock.monotonic() - began
    log.info("drill of %s from %s passed in %.1f s", newest.snapshot, destination.name, seconds)
    return DrillResult(destination.name, newest.snapshot, True, seconds)


def _drill_one(
    destination: Destination,
    manifest: Manifest,
    tools: EtcdTools,
    expect_prefixes: list[str],
    scratch_root: Path | None,
    credentials: Credentials,
    identities: Sequence[Identity],
) -> None:
    if tools.etcd is None or tools.etcdctl is None:
        raise BackupError("a drill needs etcd and etcdctl beside the restore tool")
    # mkdtemp makes it 0700: only this user reaches the sockets inside
    with tempfile.TemporaryDirectory(prefix="etcd-backupd-drill-", dir=scratch_root) as scratch:
        work = Path(scratch)
        step = f"drill of {manifest.snapshot} from {destination.name}: step"
        log.info("%s 1 of 3: fetching it", step)
        fetched = destination.fetch(manifest.snapshot, inside(work, manifest.snapshot))
        log.info("%s 2 of 3: verifying and restoring it", step)
        member = Member("drill", DRILL_PEER_URL, work / "data")
        with (
            plain_snapshot(fetched, size=manifest.size, identities=identities) as plain,
            ThreadPoolExecutor(max_workers=1) as pool,
        ):
            # the trailer must be the digest the manifest recorded; etcd's restore then checks
            # the data against the trailer, so the file need not be hashed twice. The drill's
            # data dir is scratch, so the walk runs alongside the restore instead of before it.
            walked = pool.submit(verify_snapshot, plain, expected_sha256=manifest.sha256)
            try:
                tool = restore_tool(
                    tools,
                    read_storage_version(plain),
                    bump=False,
                    etcd_version=manifest.etcd_version,
                )
                run_restore(plain, member, f"drill={DRILL_PEER_URL}", "etcd-backupd-drill", tool)
            finally:
                status = walked.result()
            if (status.revision, status.hash) != (manifest.revision, manifest.hash):
                raise BackupError(
                    f"the snapshot says revision {status.revision}, hash {status.hash}; its "
                    f"manifest says revision {manifest.revision}, hash {manifest.hash}"
                )
            etcdctl = _Throwaway(tools.etcdctl, work, _etcdctl_env(plain, credentials))
        fetched.unlink()
        log.info("%s 3 of 3: starting a throwaway etcd and checking it", step)
        with (work / "etcd.log").open("wb") as log_file:
            process = subprocess.Popen(
                [
                    str(tools.etcd),
                    "--name=drill",
                    f"--data-dir={member.data_dir}",
                    f"--listen-client-urls={DRILL_CLIENT_URL}",
                    f"--advertise-client-urls={DRILL_CLIENT_URL}",
                    f"--listen-peer-urls={DRILL_PEER_URL}",
                    f"--initial-advertise-peer-urls={DRILL_PEER_URL}",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=work,
            )
        try:
            _check_drill_member(etcdctl, manifest, expect_prefixes, process)
        finally:
            # a throwaway member whose data is deleted next needs no graceful shutdown
            process.kill()
            process.wait()


def _check_drill_member(
    etcdctl: _Throwaway,
    manifest: Manifest,
    expect_prefixes: list[str],
    process: subprocess.Popen[bytes],
) -> None:
    deadline = time.monotonic() + DRILL_START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise BackupError(f"the restored etcd exited with status {process.returncode}")
        try:
            status = json.loads(etcdctl.run("endpoint", "status", "-w", "json"))
            break
        except BackupError:
            if time.monotonic() > deadline:
                raise
            time.sleep(DRILL_POLL_INTERVAL)
    revision = status[0]["Status"]["header"]["revision"]
    if revision != manifest.revision:
        raise BackupError(f"restored revision {revision}, manifest says {manifest.revision}")
    keys = etcdctl.count("")
    if keys != manifest.live_keys:
        raise BackupError(f"restored {keys} keys, manifest says {manifest.live_keys}")
    for prefix in expect_prefixes:
        if etcdctl.count(prefix) == 0:
            raise BackupError(f"no key under {prefix!r} in the restored cluster")
