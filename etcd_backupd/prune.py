"""Applying the retention policy to one destination: what is kept, what goes, and why.

The decision itself is `retention.decide` (pure); this module feeds it a destination's snapshots
and carries out the deletions, and removes the old orphans (a snapshot without manifest, or a
manifest without snapshot) that interrupted runs leave.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from .config import Config, DestinationConfig, RetentionConfig
from .destinations import Destination
from .retention import Decision, RetentionPolicy, SnapshotRef, decide, parse_duration

log = logging.getLogger(__name__)

# An orphan younger than this may be a cycle still at work (on this host or another one).
ORPHAN_AGE = timedelta(days=1)


@dataclass(frozen=True)
class PruneResult:
    destination: str
    decisions: tuple[Decision, ...]
    deleted: tuple[str, ...]
    dry_run: bool

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
    lock: timedelta | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Decide over the destination's snapshots and delete what no rule keeps.

    Only snapshot objects are listed: one becomes visible only after it was verified, so each
    is a backup; its manifest is deleted with it by name.
    """
    candidates = [
        SnapshotRef(
            name=item.snapshot,
            created=item.created,
            locked_until=item.created + lock if lock else None,
        )
        for item in destination.snapshots()
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
    if doomed and not dry_run:
        destination.delete(doomed)
        log.info(
            "destination %s: pruned %d snapshot(s), kept %d",
            destination.name,
            len(doomed),
            len(decisions) - len(doomed),
        )
    return PruneResult(
        destination=destination.name,
        decisions=decisions,
        deleted=tuple(doomed),
        dry_run=dry_run,
    )


def sweep_orphans(destination: Destination, *, now: datetime, lock: timedelta | None) -> list[str]:
    """Remove snapshots without manifest, and manifests without snapshot, older than a day."""
    orphans = [
        item.snapshot
        for item in destination.inventory()
        if not (item.has_manifest and item.has_snapshot)
        and now - item.created > ORPHAN_AGE
        and not (lock and item.created + lock > now)
    ]
    if orphans:
        log.warning(
            "destination %s: removing %d orphan(s) older than %s: %s",
            destination.name,
            len(orphans),
            ORPHAN_AGE,
            ", ".join(orphans),
        )
        destination.delete(orphans)
    return orphans
