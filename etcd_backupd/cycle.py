"""One backup cycle, start to end: snapshot → verify → destinations. The only place that sequences
the stages; the CLI and the daemon both call `run_cycle` and read its plain-data result."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import __version__
from .clock import SYSTEM_CLOCK, Clock, StageTimer
from .config import Config
from .destinations import Destination, SpooledSnapshot, build
from .errors import (
    BackupError,
    Cancelled,
    DestinationBusy,
    DestinationError,
    EtcdError,
    ExitCode,
    SnapshotInvalid,
)
from .etcd import EtcdSource, MemberStatus
from .fsutil import fsync_dir, fsync_file, part_path
from .manifest import Cluster, Manifest, MemberInfo, snapshot_name
from .memory import return_free_heap
from .prune import PruneResult, lock_period, policy_for, prune
from .runlock import Claims
from .shipment import Shipment
from .snapshot.status import SnapshotStatus, verify_snapshot
from .spool import SpoolError, SpoolWriter, choose_spool_dir
from .stall import Unanswered, stall_bound, within

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DestinationResult:
    name: str
    ok: bool
    manifest: Manifest | None = None
    error: str | None = None
    pruned: PruneResult | None = None
    prune_error: str | None = None
    # left to another run that was writing into it at the same time: no failure of this one
    busy: bool = False


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
    exit_code: ExitCode = ExitCode.OK

    @property
    def duration(self) -> float:
        return (self.finished - self.started).total_seconds()


def _spool_snapshot(
    source: EtcdSource,
    member: MemberStatus,
    part: Path,
    shipment: Shipment,
    cancel: threading.Event,
) -> tuple[str, str]:
    """Stream one member's snapshot into `part` and the uploads; return the SHA-256 (hex) of
    its database bytes and of the whole file.

    The file ends up exactly as `etcdctl snapshot save` writes it: database bytes, then the
    32-byte SHA-256 etcd sent after them, which must match the bytes received.
    """
    stream = source.open_snapshot(member, cancel)
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
        shipment.finish()
    except EtcdError as exc:
        stream.cancel()
        writer.close()
        if cancel.is_set():
            raise Cancelled(f"backup cancelled after {stream.received} bytes") from exc
        raise
    except BaseException:
        stream.cancel()
        writer.close()
        raise
    assert writer.file_sha256 is not None
    return received.hex(), writer.file_sha256


def run_cycle(
    config: Config,
    *,
    clock: Clock = SYSTEM_CLOCK,
    destinations: Sequence[Destination] | None = None,
    cancel: threading.Event | None = None,
) -> CycleResult:
    """Take one snapshot, verify it and ship it to every destination. Never raises BackupError."""
    started = clock.now()
    began = clock.monotonic()
    stages = StageTimer(clock)
    targets = (
        list(destinations) if destinations is not None else [build(d) for d in config.destination]
    )
    claims = Claims(config.state_dir, clock)
    part: Path | None = None
    shipment: Shipment | None = None

    def failed(error: BackupError) -> CycleResult:
        log.error("backup failed at %s: %s", stages.current, error)
        # the stage that failed has no duration: the duration histograms count finished stages
        finished = {stage: s for stage, s in stages.seconds.items() if stage != stages.current}
        return CycleResult(
            started=started,
            finished=clock.now(),
            ok=False,
            error=str(error),
            failed_stage=stages.current,
            stage_seconds=finished,
            exit_code=error.exit_code,
        )

    try:
        with stages.stage("snapshot"):
            held = _housekeeping(config, claims.take(targets), started, claims.failures)
            if not held:
                raise DestinationError(
                    "no destination can take the snapshot: " + "; ".join(claims.failures.values())
                )
            source = EtcdSource(config.etcd)
            members = source.healthy_members()
            cluster_id = f"{members[0].cluster_id:016x}"
            cluster_name = config.etcd.cluster_name or cluster_id
            name = snapshot_name(cluster_name, started)
            (sha256, file_sha256), member, shipment, part, durable = _stream_from_first_working(
                source,
                members,
                config.state_dir / "spool",
                held,
                name,
                cancel or threading.Event(),
                claims.failures,
                {t.name: stall_bound(config, t.name) for t in held},
                clock,
            )

        with stages.stage("verify"):
            return_free_heap()
            status = _verify_and_sync(part, sha256, durable)
        log.info(
            "verified %s: revision %d, %d keys, hash %d, %d bytes",
            name,
            status.revision,
            status.total_keys,
            status.hash,
            status.file_size,
        )

        with stages.stage("ship"):
            manifest = _manifest(
                name, started, began, status, member, cluster_id, cluster_name, clock=clock
            )
            stored = shipment.commit(SpooledSnapshot(part, status, file_sha256), manifest)

        with stages.stage("prune"):
            cluster = Cluster(cluster_name, cluster_id)
            results = tuple(
                _prune(config, target, stored[target.name], started, cluster)
                if target.name in stored
                else _not_stored(target.name, claims, shipment)
                for target in targets
            )
    except BackupError as exc:
        return failed(exc)
    finally:
        if shipment is not None:
            shipment.abort()
        if part is not None:
            _remove(part)
        claims.release()

    failures = [f"{r.name}: {r.error}" for r in results if not r.ok and not r.busy]
    refusals = [f"{r.name}: {r.error}" for r in results if r.busy]
    exit_code = ExitCode.OK
    if failures:
        exit_code = DestinationError.exit_code
    elif not stored:
        # every destination got a snapshot from another run of the same moment instead
        exit_code = DestinationBusy.exit_code
        failures = refusals
    if exit_code:
        log.error("backup %s reached %d of %d destinations", name, len(stored), len(targets))
    return CycleResult(
        started=started,
        finished=clock.now(),
        ok=not exit_code,
        manifest=manifest,
        destinations=results,
        error="; ".join(failures) or None,
        failed_stage="ship" if exit_code else None,
        stage_seconds=stages.seconds,
        exit_code=exit_code,
    )


def _not_stored(name: str, claims: Claims, shipment: Shipment) -> DestinationResult:
    refusal = claims.busy.get(name) or shipment.busy.get(name)
    if refusal is not None:
        return DestinationResult(name, False, error=refusal, busy=True)
    error = claims.failures.get(name) or shipment.failures.get(name, "not stored")
    return DestinationResult(name, False, error=error)


def _remove(path: Path) -> None:
    """Remove a file this run created; a failure to is worth a warning, not the cycle."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc.strerror)


def _prune(
    config: Config, target: Destination, stored: Manifest, now: datetime, cluster: Cluster
) -> DestinationResult:
    """Prune a destination that just received this cycle's snapshot (never one that did not)."""
    settings = next((d for d in config.destination if d.name == target.name), None)
    if settings is None:
        return DestinationResult(target.name, True, manifest=stored)
    try:
        pruned = prune(
            target,
            policy_for(config, settings),
            now=now,
            cluster=cluster,
            lock=lock_period(settings),
        )
    except BackupError as exc:
        log.error("destination %s: pruning failed: %s", target.name, exc)
        return DestinationResult(target.name, True, manifest=stored, prune_error=str(exc))
    return DestinationResult(target.name, True, manifest=stored, pruned=pruned)


def _housekeeping(
    config: Config, targets: Sequence[Destination], now: datetime, failures: dict[str, str]
) -> list[Destination]:
    """Clear what interrupted runs left; a failure here is logged and never stops the backup,
    but a destination that does not answer within its stall_timeout is given up for this cycle.
    Return the destinations still in it. Snapshots without a manifest are left alone: nothing
    proves they are ours (pruning reports them, and `prune --orphans` removes them)."""
    answering = []
    for target in targets:

        def sweep(target: Destination = target) -> None:
            for leftover in target.housekeeping(now):
                log.warning(
                    "destination %s: removed %s, left by an interrupted run", target.name, leftover
                )

        try:
            within(stall_bound(config, target.name), target.name, "housekeeping", sweep)
        except Unanswered as exc:
            log.error("%s", exc)
            failures[target.name] = str(exc)
            continue
        except BackupError as exc:
            log.warning("destination %s: housekeeping failed: %s", target.name, exc)
        answering.append(target)
    return answering


def _stream_from_first_working(
    source: EtcdSource,
    members: list[MemberStatus],
    spool_fallback: Path,
    targets: Sequence[Destination],
    name: str,
    cancel: threading.Event,
    failures: dict[str, str],
    bounds: dict[str, float | None],
    clock: Clock,
) -> tuple[tuple[str, str], MemberStatus, Shipment, Path, bool]:
    """Stream the snapshot from the first member that delivers it whole; return its SHA-256s,
    the member, the uploads, the spooled file and whether that file is kept as a backup.

    A destination whose directory cannot hold the spool file (full, read-only) fails alone:
    the stream starts over in the next local destination, else in `spool_fallback`."""
    problems: list[str] = []
    targets = list(targets)
    for member in members:
        while True:
            spool, owner = choose_spool_dir(targets, spool_fallback, clock)
            part = part_path(spool / name)
            log.info("streaming snapshot from %s", member.describe())
            shipment = Shipment(targets, name, part, cancel, bounds)
            if not shipment.uploads and not shipment.failures:
                raise DestinationBusy(
                    "another run of the same second is backing up to every destination: "
                    + "; ".join(shipment.busy.values())
                )
            if not shipment.uploads:
                raise DestinationError(
                    "no destination can take the snapshot: " + "; ".join(shipment.failures.values())
                )
            # a destination that stores the snapshot compressed or encrypted only reads the spool:
            # flushing it to disk would be work for a file about to be removed
            kept = owner is not None and owner.keeps_spool()
            try:
                digests = _spool_snapshot(source, member, part, shipment, cancel)
            except SpoolError as exc:
                shipment.abort()
                _remove(part)
                if owner is None:
                    raise
                error = f"destination {owner.name!r}: {exc}"
                log.error("%s; the other destinations go on", error)
                failures[owner.name] = error
                targets.remove(owner)
                if not targets:
                    raise DestinationError(error) from exc
                continue
            except (EtcdError, SnapshotInvalid) as exc:
                shipment.abort()
                _remove(part)
                log.warning("%s", exc)
                problems.append(str(exc))
                break
            except BaseException:
                shipment.abort()
                _remove(part)
                raise
            log.info("snapshot from %s: %d bytes", member.describe(), part.stat().st_size)
            return digests, member, shipment, part, kept
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
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> Manifest:
    return Manifest(
        snapshot=name,
        created=started,
        duration_seconds=round(clock.monotonic() - began, 3),
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
