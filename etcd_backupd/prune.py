"""Applying the retention policy to one cluster's backups in one destination: what is kept, what
goes, and why.

The decision itself is `retention.decide` (pure); this module feeds it the backups of one cluster
(a snapshot with a valid manifest of that cluster beside it) and carries out the deletions. A
destination may be shared by many clusters and other tools: whatever is not this cluster's
backup is never deleted, and a snapshot without a valid manifest (copied in by hand, or left by
an interrupted run) is only reported, unless the operator asks for it (`prune --orphans`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from .config import Config
from .config_destinations import DestinationConfig
from .config_schedule import RetentionConfig
from .destinations import Destination
from .errors import BackupError
from .manifest import Cluster
from .retention import (
    FUTURE_MINUTES,
    Decision,
    RetentionPolicy,
    SnapshotRef,
    decide,
    is_future,
    parse_duration,
)

log = logging.getLogger(__name__)

# An orphan younger than this may be a cycle still at work (on this host or another one).
ORPHAN_AGE = timedelta(days=1)


@dataclass(frozen=True)
class PruneResult:
    destination: str
    decisions: tuple[Decision, ...]
    deleted: tuple[str, ...]
    dry_run: bool
    # this cluster's snapshots without a valid manifest, and manifests without a snapshot
    orphans: tuple[str, ...] = ()
    orphans_deleted: tuple[str, ...] = ()

    @property
    def kept(self) -> int:
        return sum(1 for d in self.decisions if d.keep)


def policy_of(retention: RetentionConfig) -> RetentionPolicy:
    return RetentionPolicy(
        keep_last=retention.keep_last,
        keep_hourly=retention.keep_hourly,
        keep_daily=retention.keep_daily,
        keep_weekly=retention.keep_weekly,
        keep_monthly=retention.keep_monthly,
        keep_yearly=retention.keep_yearly,
        keep_within=parse_duration(retention.keep_within) if retention.keep_within else None,
    )


def policy_for(config: Config, destination: DestinationConfig) -> RetentionPolicy:
    """The destination's own [retention] when it has one, else the global one."""
    return policy_of(destination.retention or config.retention)


def lock_period(destination: DestinationConfig) -> timedelta | None:
    days = getattr(destination, "object_lock_days", None)
    return timedelta(days=days) if days else None


def prune(
    destination: Destination,
    policy: RetentionPolicy,
    *,
    now: datetime,
    cluster: Cluster,
    lock: timedelta | None = None,
    dry_run: bool = False,
    orphans: bool = False,
) -> PruneResult:
    """Decide over `cluster`'s backups in the destination and delete what no rule keeps; with
    `orphans`, also remove that cluster's orphans older than a day."""
    inventory = destination.inventory()
    backups = [m for m in destination.manifests(inventory) if cluster.owns(m)]
    candidates = [
        SnapshotRef(
            name=m.snapshot,
            created=m.created,
            locked_until=m.created + lock if lock else None,
        )
        for m in backups
    ]
    decisions = tuple(decide(candidates, policy, now=now))
    doomed = [d.snapshot.name for d in decisions if not d.keep]
    for decision in decisions:
        log.debug(
            "destination %s: %s %s (%s)",
            destination.name,
            "keep" if decision.keep else "delete",
            decision.snapshot.name,
            ", ".join(decision.reasons),
        )
    future = [m.snapshot for m in backups if is_future(m.created, now)]
    if future:
        log.warning(
            "destination %s: %d snapshot(s) dated more than %d min in the future are kept but "
            "never count as the newest (check the clock of the host that wrote them): %s",
            destination.name,
            len(future),
            FUTURE_MINUTES,
            ", ".join(future),
        )
    paired = {m.snapshot for m in backups}
    stray = [
        item for item in inventory if cluster.named(item.snapshot) and item.snapshot not in paired
    ]
    removable = [
        item.snapshot
        for item in stray
        if orphans and now - item.created > ORPHAN_AGE and not (lock and item.created + lock > now)
    ]
    if stray and not orphans:
        log.warning(
            "destination %s: %d snapshot(s) or manifest(s) of cluster %s are not complete "
            "backups and are left alone (prune --orphans removes those older than a day): %s",
            destination.name,
            len(stray),
            cluster.name,
            ", ".join(item.snapshot for item in stray),
        )
    if (doomed or removable) and not dry_run:
        destination.delete(doomed + removable)
        note = _deletion_note(destination)
        log.info(
            "destination %s: pruned %d snapshot(s) of cluster %s, kept %d%s%s",
            destination.name,
            len(doomed),
            cluster.name,
            len(decisions) - len(doomed),
            f", removed {len(removable)} orphan(s)" if removable else "",
            f"; {note}" if note else "",
        )
    return PruneResult(
        destination=destination.name,
        decisions=decisions,
        deleted=tuple(doomed),
        dry_run=dry_run,
        orphans=tuple(item.snapshot for item in stray),
        orphans_deleted=tuple(removable),
    )


def _deletion_note(destination: Destination) -> str | None:
    """What became of the deleted data: a versioned bucket keeps it readable."""
    try:
        return destination.deletion_note()
    except BackupError as exc:
        return f"cannot tell whether deleted objects stay as old versions: {exc}"
