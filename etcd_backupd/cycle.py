"""One backup cycle, start to end: snapshot → verify → destinations. The only place that sequences
the stages; the CLI and the daemon both call `run_cycle` and read its plain-data result."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from .config import Config
from .destinations import Destination, SpooledSnapshot, Upload, build
from .errors import BackupError, Cancelled, DestinationError, EtcdError, SnapshotInvalid
from .etcd import EtcdSource, MemberStatus
from .fsutil import (
    PART_SUFFIX,
    fsync_dir,
    fsync_file,
    make_private_dir,
    remove_stale_parts,
)
from .manifest import Manifest, MemberInfo, snapshot_name
from .prune import PruneResult, lock_period, policy_for, prune, sweep_orphans
from .snapshot.status import SnapshotStatus, verify_snapshot
from .spool import SpoolWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DestinationResult:
    name: str
    ok: bool
    manifest: Manifest | None = None
    error: str | None = None
    pruned: PruneResult | None = None
    prune_error: str | None = None


@dataclass(frozen=True)
class CycleResult:
    started: datetime
    finished: datetime
    ok: bool
    manifest: Manifest | None = None
    destinations: tuple[DestinationResult, ...] = ()
    error: str | None = None
    failed_stage: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    exit_code: int = 0

    @property
    def duration(self) -> float:
        return (self.finished - self.started).total_seconds()


def _utcnow() -> datetime:
    return datetime.now(UTC)


def choose_spool_dir(destinations: Sequence[Destination], fallback: Path) -> tuple[Path, bool]:
    """Stream into the first destination that offers local disk, so storing there costs a link;
    else into a scratch directory. Says whether the spool file will be kept as a backup."""
    for destination in destinations:
        try:
            directory = destination.spool_dir()
        except BackupError as exc:
            # that destination fails on its own when the snapshot is stored; the others go on
            log.warning("cannot spool into destination %s: %s", destination.name, exc)
            continue
        if directory is not None:
            return directory, True
    try:
        make_private_dir(fallback)
    except OSError as exc:
        raise DestinationError(
            f"cannot create spool directory {fallback}: {exc.strerror}; set state_dir"
        ) from exc
    for stale in remove_stale_parts(fallback, datetime.now(UTC)):
        log.warning("removed %s, left by an interrupted run", fallback / stale)
    return fallback, False


class _Shipment:
    """The uploads of one streaming attempt; a destination that fails drops out alone."""

    def __init__(self, targets: Sequence[Destination], snapshot: str) -> None:
        self.uploads: dict[str, Upload] = {}
        self.failures: dict[str, str] = {}
        for target in targets:
            try:
                self.uploads[target.name] = target.begin(snapshot)
            except BackupError as exc:
                self._failed(target.name, exc)

    def _failed(self, name: str, exc: BaseException) -> None:
        log.error("destination %s failed: %s", name, exc)
        self.failures[name] = str(exc)

    def write(self, chunk: bytes) -> None:
        for name, upload in list(self.uploads.items()):
            try:
                upload.write(chunk)
            except BackupError as exc:
                self._failed(name, exc)
                self._drop(name)

    def _drop(self, name: str) -> None:
        upload = self.uploads.pop(name)
        try:
            upload.abort()
        except BackupError as exc:
            log.warning("destination %s: cleaning up the failed upload: %s", name, exc)

    def abort(self) -> None:
        for name in list(self.uploads):
            self._drop(name)

    def commit(self, spooled: SpooledSnapshot, manifest: Manifest) -> dict[str, Manifest]:
        stored: dict[str, Manifest] = {}
        for name in list(self.uploads):
            try:
                stored[name] = self.uploads[name].commit(spooled, manifest)
            except BackupError as exc:
                self._failed(name, exc)
            del self.uploads[name]
        return stored


def _spool_snapshot(
    source: EtcdSource,
    member: MemberStatus,
    part: Path,
    shipment: _Shipment,
    cancel: threading.Event,
) -> str:
    """Stream one member's snapshot into `part` and the uploads; return its SHA-256 (hex).

    The file ends up exactly as `etcdctl snapshot save` writes it: database bytes, then the
    32-byte SHA-256 etcd sent after them, which must match the bytes received.
    """
    stream = source.open_snapshot(member)
    try:
        writer = SpoolWriter(part, shipment.write)
    except BackupError:
        stream.cancel()
        raise
    try:
        for chunk in stream:
            if cancel.is_set():
                raise Cancelled(f"backup cancelled after {stream.received} bytes")
            writer.write(chunk)
        received = writer.data_digest()
        if stream.digest != received:
            raise SnapshotInvalid(
                f"snapshot from {member.describe()} does not match the SHA-256 etcd sent with it: "
                "the data was damaged in transit"
            )
        writer.seal(stream.digest)
    except BaseException:
        stream.cancel()
        writer.close()
        raise
    return received.hex()


class _Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current = "snapshot"

    def start(self, stage: str) -> float:
        self.current = stage
        return time.monotonic()

    def stop(self, stage: str, began: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.monotonic() - began


def run_cycle(
    config: Config,
    *,
    clock: Callable[[], datetime] = _utcnow,
    destinations: Sequence[Destination] | None = None,
    cancel: threading.Event | None = None,
) -> CycleResult:
    """Take one snapshot, verify it and ship it to every destination. Never raises BackupError."""
    started = clock()
    began = time.monotonic()
    stages = _Stages()
    targets = (
        list(destinations) if destinations is not None else [build(d) for d in config.destination]
    )
    part: Path | None = None
    shipment: _Shipment | None = None

    def failed(error: BackupError) -> CycleResult:
        log.error("backup failed at %s: %s", stages.current, error)
        return CycleResult(
            started=started,
            finished=clock(),
            ok=False,
            error=str(error),
            failed_stage=stages.current,
            stage_seconds=stages.seconds,
            exit_code=error.exit_code,
        )

    try:
        mark = stages.start("snapshot")
        _housekeeping(config, targets, started)
        spool, durable = choose_spool_dir(targets, config.state_dir / "spool")
        source = EtcdSource(config.etcd)
        members = source.healthy_members()
        cluster_id = f"{members[0].cluster_id:016x}"
        cluster_name = config.etcd.cluster_name or cluster_id
        name = snapshot_name(cluster_name, started)
        part = spool / (name + PART_SUFFIX)
        sha256, member, shipment = _stream_from_first_working(
            source, members, part, targets, name, cancel or threading.Event()
        )
        stages.stop("snapshot", mark)

        mark = stages.start("verify")
        status = _verify_and_sync(part, sha256, durable)
        stages.stop("verify", mark)
        log.info(
            "verified %s: revision %d, %d keys, hash %d, %d bytes",
            name,
            status.revision,
            status.total_keys,
            status.hash,
            status.file_size,
        )

        mark = stages.start("ship")
        manifest = _manifest(name, started, began, status, member, cluster_id, cluster_name)
        stored = shipment.commit(SpooledSnapshot(part, status), manifest)
        stages.stop("ship", mark)
    except BackupError as exc:
        return failed(exc)
    finally:
        if shipment is not None:
            shipment.abort()
        if part is not None:
            part.unlink(missing_ok=True)

    mark = stages.start("prune")
    results = tuple(
        _prune(config, target, stored[target.name], started)
        if target.name in stored
        else DestinationResult(
            target.name, False, error=shipment.failures.get(target.name, "not stored")
        )
        for target in targets
    )
    stages.stop("prune", mark)
    failures = [f"{r.name}: {r.error}" for r in results if not r.ok]
    if failures:
        stages.current = "ship"
        log.error(
            "backup %s reached %d of %d destinations",
            name,
            len(targets) - len(failures),
            len(targets),
        )
    return CycleResult(
        started=started,
        finished=clock(),
        ok=not failures,
        manifest=manifest,
        destinations=results,
        error="; ".join(failures) or None,
        failed_stage="ship" if failures else None,
        stage_seconds=stages.seconds,
        exit_code=DestinationError.exit_code if failures else 0,
    )


def _prune(
    config: Config, target: Destination, stored: Manifest, now: datetime
) -> DestinationResult:
    """Prune a destination that just received this cycle's snapshot (never one that did not)."""
    settings = next((d for d in config.destination if d.name == target.name), None)
    if settings is None:
        return DestinationResult(target.name, True, manifest=stored)
    try:
        pruned = prune(target, policy_for(config, settings), now=now, lock=lock_period(settings))
    except BackupError as exc:
        log.error("destination %s: pruning failed: %s", target.name, exc)
        return DestinationResult(target.name, True, manifest=stored, prune_error=str(exc))
    return DestinationResult(target.name, True, manifest=stored, pruned=pruned)


def _housekeeping(config: Config, targets: Sequence[Destination], now: datetime) -> None:
    """Clear what interrupted runs left; a failure here is logged and never stops the backup."""
    settings = {d.name: d for d in config.destination}
    for target in targets:
        try:
            for leftover in target.housekeeping(now):
                log.warning(
                    "destination %s: removed %s, left by an interrupted run", target.name, leftover
                )
            lock = lock_period(settings[target.name]) if target.name in settings else None
            sweep_orphans(target, now=now, lock=lock)
        except BackupError as exc:
            log.warning("destination %s: housekeeping failed: %s", target.name, exc)


def _stream_from_first_working(
    source: EtcdSource,
    members: list[MemberStatus],
    part: Path,
    targets: Sequence[Destination],
    name: str,
    cancel: threading.Event,
) -> tuple[str, MemberStatus, _Shipment]:
    problems: list[str] = []
    for member in members:
        log.info("streaming snapshot from %s", member.describe())
        shipment = _Shipment(targets, name)
        if not shipment.uploads:
            raise DestinationError(
                "no destination can take the snapshot: " + "; ".join(shipment.failures.values())
            )
        try:
            sha256 = _spool_snapshot(source, member, part, shipment, cancel)
        except (EtcdError, SnapshotInvalid) as exc:
            shipment.abort()
            part.unlink(missing_ok=True)
            log.warning("%s", exc)
            problems.append(str(exc))
            continue
        except BaseException:
            shipment.abort()
            part.unlink(missing_ok=True)
            raise
        log.info("snapshot from %s: %d bytes", member.describe(), part.stat().st_size)
        return sha256, member, shipment
    raise EtcdError("no member delivered a complete snapshot: " + "; ".join(problems))


def _verify_and_sync(part: Path, sha256: str, durable: bool) -> SnapshotStatus:
    """Verify the spooled snapshot while, if it is to be kept, the disk catches up with it:
    verification reads the page cache, so neither waits for the other."""
    if not durable:
        return verify_snapshot(part, expected_sha256=sha256)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync") as pool:
        synced = pool.submit(_make_durable, part)
        # a damaged snapshot is reported as such, once the flush has ended, whatever its outcome
        status = verify_snapshot(part, expected_sha256=sha256)
        synced.result()
    return status


def _make_durable(part: Path) -> None:
    try:
        fsync_file(part)
        fsync_dir(part.parent)
    except OSError as exc:
        raise DestinationError(f"cannot write {part} to disk: {exc.strerror}") from exc


def _manifest(
    name: str,
    started: datetime,
    began: float,
    status: SnapshotStatus,
    member: MemberStatus,
    cluster_id: str,
    cluster_name: str,
) -> Manifest:
    return Manifest(
        snapshot=name,
        created=started,
        duration_seconds=round(time.monotonic() - began, 3),
        size=status.file_size,
        stored_size=status.file_size,
        sha256=status.sha256,
        revision=status.revision,
        total_keys=status.total_keys,
        live_keys=status.live_keys,
        storage_version=status.storage_version,
        total_size=status.total_size,
        hash=status.hash,
        etcd_version=member.version,
        cluster_id=cluster_id,
        cluster_name=cluster_name,
        member=MemberInfo(
            id=f"{member.member_id:016x}",
            name=member.name,
            endpoint=member.endpoint,
            is_leader=member.is_leader,
        ),
        tool_version=__version__,
    )
