"""Whether each destination holds a recent enough backup: the judgement `status` prints and
exits by. Pure: manifests, times and limits in, a report out."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from .drill_record import DrillRecord
from .manifest import Manifest


@dataclass(frozen=True)
class ClusterBackups:
    """One cluster's backups in one destination."""

    cluster: str
    newest: Manifest | None  # None when every one is dated in the future
    count: int
    total_bytes: int
    future: int  # dated after "now": a wrong clock somewhere; never taken as the newest
    judged: bool  # whether the destination's freshness depends on this cluster


@dataclass(frozen=True)
class DestinationStatus:
    destination: str
    checked_at: datetime
    clusters: list[ClusterBackups]
    newest: Manifest | None  # the newest judged backup
    max_age: timedelta | None  # None: the schedule fires less than twice, nothing is stale
    next_fire: datetime | None
    drill: DrillRecord | None
    error: str | None = None  # the destination could not be listed

    @property
    def age(self) -> timedelta | None:
        return None if self.newest is None else self.checked_at - self.newest.created

    @property
    def fresh(self) -> bool:
        if self.error is not None or self.age is None:
            return False
        return self.max_age is None or self.age <= self.max_age


def assess(
    destination: str,
    manifests: list[Manifest],
    *,
    now: datetime,
    max_age: timedelta | None,
    cluster: str | None,
    next_fire: datetime | None,
    drill: DrillRecord | None,
) -> DestinationStatus:
    """The destination's backups grouped by cluster. Only `cluster`'s backups are judged when it
    is named (another cluster's old backups in a shared bucket are not this host's concern);
    otherwise the destination's newest backup of any cluster is."""
    grouped: dict[str, list[Manifest]] = defaultdict(list)
    for manifest in manifests:
        grouped[manifest.cluster_name].append(manifest)
    clusters = []
    for name in sorted(grouped):
        held = grouped[name]
        past = [m for m in held if m.created <= now]
        clusters.append(
            ClusterBackups(
                cluster=name,
                newest=max(past, key=lambda m: m.created, default=None),
                count=len(held),
                total_bytes=sum(m.stored_size for m in held),
                future=len(held) - len(past),
                judged=cluster is None or name == cluster,
            )
        )
    candidates = [c.newest for c in clusters if c.judged and c.newest is not None]
    return DestinationStatus(
        destination=destination,
        checked_at=now,
        clusters=clusters,
        newest=max(candidates, key=lambda m: m.created, default=None),
        max_age=max_age,
        next_fire=next_fire,
        drill=drill,
    )


def unreadable(
    destination: str,
    error: str,
    *,
    now: datetime,
    max_age: timedelta | None,
    next_fire: datetime | None,
    drill: DrillRecord | None,
) -> DestinationStatus:
    return DestinationStatus(destination, now, [], None, max_age, next_fire, drill, error)
