"""Restore drills: the newest backup restored into a throwaway member and checked against its
manifest, proving on a schedule that the backups restore."""

from __future__ import annotations

import json
import logging
import os
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
from .errors import BackupError, ExitCode, IdentityError
from .fsutil import inside
from .manifest import Cluster, Manifest
from .restore import EtcdTools, Member, newest_backup, restore_tool, run_restore
from .snapshot.keyspace import auth_enabled
from .snapshot.status import read_storage_version, verify_snapshot

log = logging.getLogger(__name__)

# a drill's throwaway member must answer within this long after it starts
DRILL_START_TIMEOUT = 120.0
DRILL_POLL_INTERVAL = 0.05


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
        fetched = destination.fetch(
            manifest.snapshot, inside(work, manifest.snapshot), stored_sha256=manifest.stored_sha256
        )
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
