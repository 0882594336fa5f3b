"""Which snapshots to keep: restic `forget` semantics, as pure data in, decisions out.

- keep_last N keeps the N newest.
- keep_hourly/daily/weekly/monthly/yearly N keep the newest snapshot of each of the N most
  recent periods that hold a snapshot (periods are counted over the snapshots that exist, not
  over the calendar, so an outage does not use up slots). Periods are UTC; weeks are ISO weeks.
- keep_within D keeps every snapshot no older than D before the newest snapshot (not before
  the clock: weeks of failed backups never age the good ones out).
- Each rule walks all snapshots on its own; a snapshot kept by one rule still counts for the
  others. A snapshot is kept when any rule keeps it.
- Unbreakable: the newest verified snapshot is kept, and so is every snapshot whose Object Lock
  retention has not ended. An empty policy keeps everything.
- Only verified snapshots fill rule slots: an unverified one could be the bad copy, and letting
  it take a daily slot would push a good snapshot of that day out. Unverified snapshots are
  kept only by keep_within (they are recent and may be looked at) or an Object Lock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

_DURATION_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
_DURATION_RE = re.compile(r"(\d+)([hdw])")


def parse_duration(text: str) -> timedelta:
    """Durations like "14d", "2w", "36h", "1w3d12h" (h hours, d days, w weeks)."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION_RE.sub("", compact):
        raise ValueError(
            f'{text!r} is not a duration; use a number with h, d or w, e.g. "14d" or "1w3d"'
        )
    total = timedelta()
    for amount, unit in _DURATION_RE.findall(compact):
        total += int(amount) * _DURATION_UNITS[unit]
    if total <= timedelta():
        raise ValueError(f"{text!r} must be longer than zero")
    return total


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: timedelta | None = None

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int) and value < 0:
                raise ValueError(f"{field.name} must not be negative")

    def is_empty(self) -> bool:
        return not any(getattr(self, field.name) for field in fields(self))


@dataclass(frozen=True)
class SnapshotRef:
    name: str
    created: datetime
    verified: bool = True
    locked_until: datetime | None = None


@dataclass(frozen=True)
class Decision:
    snapshot: SnapshotRef
    keep: bool
    reasons: tuple[str, ...]


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _iso_week(moment: datetime) -> str:
    year, week, _ = _utc(moment).isocalendar()
    return f"{year}-W{week:02d}"


_PERIODS: dict[str, Callable[[datetime], str]] = {
    "hourly": lambda t: _utc(t).strftime("%Y-%m-%d %H:00"),
    "daily": lambda t: _utc(t).strftime("%Y-%m-%d"),
    "weekly": _iso_week,
    "monthly": lambda t: _utc(t).strftime("%Y-%m"),
    "yearly": lambda t: _utc(t).strftime("%Y"),
}


def decide(
    snapshots: Iterable[SnapshotRef], policy: RetentionPolicy, *, now: datetime | None = None
) -> list[Decision]:
    """Keep or delete for each snapshot, newest first, with the rules that kept it."""
    ordered = sorted(snapshots, key=lambda s: (_utc(s.created), s.name), reverse=True)
    reasons: dict[str, list[str]] = {s.name: [] for s in ordered}
    if policy.is_empty():
        for snapshot in ordered:
            reasons[snapshot.name].append("no retention rule set")
    verified = [s for s in ordered if s.verified]
    if verified:
        reasons[verified[0].name].append("newest verified")
    if policy.keep_last:
        for position, snapshot in enumerate(verified[: policy.keep_last], start=1):
            reasons[snapshot.name].append(f"last {position}")
    for period, bucket_of in _PERIODS.items():
        limit = getattr(policy, f"keep_{period}")
        if not limit:
            continue
        seen: set[str] = set()
        for snapshot in verified:
            bucket = bucket_of(snapshot.created)
            if bucket in seen:
                continue
            seen.add(bucket)
            reasons[snapshot.name].append(f"{period} {bucket}")
            if len(seen) == limit:
                break
    if policy.keep_within and ordered:
        cutoff = _utc(ordered[0].created) - policy.keep_within
        for snapshot in ordered:
            if _utc(snapshot.created) >= cutoff:
                reasons[snapshot.name].append(f"within {_format(policy.keep_within)}")
    for snapshot in ordered:
        locked = snapshot.locked_until
        if locked is not None and (now is None or locked > now):
            reasons[snapshot.name].append(f"object-locked until {_utc(locked):%Y-%m-%dT%H:%MZ}")
    return [
        Decision(s, bool(reasons[s.name]), tuple(reasons[s.name]) or ("no rule kept it",))
        for s in ordered
    ]


def _format(duration: timedelta) -> str:
    hours = int(duration.total_seconds() // 3600)
    days, hours = divmod(hours, 24)
    return (f"{days}d" if days else "") + (f"{hours}h" if hours else "") or "0h"
