"""Which snapshots to keep: restic `forget` semantics, as pure data in, decisions out.

- keep_last N keeps the N newest.
- keep_hourly/daily/weekly/monthly/yearly N keep the newest snapshot of each of the N most
  recent periods that hold a snapshot (periods are counted over the snapshots that exist, not
  over the calendar, so an outage does not use up slots). Periods are UTC; weeks are ISO weeks,
  so 2027-01-01 belongs to 2026-W53.
- keep_within D keeps every snapshot created at most D before the newest verified snapshot
  (not before the clock: weeks of failed backups never age the good ones out).
- Each rule walks all snapshots on its own; a snapshot kept by one rule still counts for the
  others. A snapshot is kept when any rule keeps it. A count of 0 turns its rule off.
- Unbreakable: the newest verified snapshot is kept, and so is every snapshot whose Object Lock
  retention has not ended (the store would refuse the delete anyway). A policy with no rule
  switched on keeps everything.

Unverified snapshots (not proven restorable) are handled so that they can never cost a good one:
- They fill no keep_last or period slot: a bad copy taking the day's slot would push that day's
  good snapshot out.
- keep_within is anchored on the newest *verified* snapshot, so a run of bad snapshots does not
  slide the window past the good ones.
- An unverified snapshot newer than every verified one is kept: it may hold the only copy of the
  latest state (verification itself may be what is broken), and if none is verified, pruning
  must not empty the destination. Once a newer snapshot verifies, the older unverified ones go
  unless keep_within or a lock keeps them.
So the decisions about verified snapshots are the same as if the unverified ones did not exist.

A snapshot dated beyond `now` + FUTURE_TOLERANCE (a host with a skewed clock, or a planted file)
is kept and otherwise ignored: it fills no slot and never anchors keep_within, else every new
backup would fall outside the window it sets and be deleted as soon as it was stored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

# clocks of the hosts sharing a destination drift a little; beyond this a date is not believed
FUTURE_MINUTES = 5
FUTURE_TOLERANCE = timedelta(minutes=FUTURE_MINUTES)

_DURATION_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
# restic reads "m" as months; elsewhere it means minutes. Calendar units cannot be a timedelta
# anyway, so both are refused with the spelling that says exactly what is meant.
_CALENDAR_UNITS = {
    "m": 'months or minutes? write days or hours, e.g. "30d"',
    "y": 'years differ in length: write days, e.g. "365d"',
}
_DURATION_TOKEN = re.compile(r"(\d+)([a-z]+)")
_DURATION_HELP = 'write whole numbers with h (hours), d (days) or w (weeks), e.g. "14d" or "1w3d"'


def parse_duration(text: str) -> timedelta:
    """A duration such as "14d", "2w", "36h" or "1w 3d 12h" (h hours, d days, w weeks)."""
    compact = "".join(text.split()).lower()
    tokens = _DURATION_TOKEN.findall(compact)
    if not compact or "".join(amount + unit for amount, unit in tokens) != compact:
        raise ValueError(f"{text!r} is not a duration: {_DURATION_HELP}")
    total = timedelta()
    for amount, unit in tokens:
        if unit in _CALENDAR_UNITS:
            raise ValueError(f'{text!r}: "{unit}" is not accepted ({_CALENDAR_UNITS[unit]})')
        if unit not in _DURATION_UNITS:
            raise ValueError(f'{text!r}: unknown unit "{unit}"; {_DURATION_HELP}')
        try:
            total += int(amount) * _DURATION_UNITS[unit]
        except (OverflowError, ValueError):
            raise ValueError(f"{text!r} is too long a duration") from None
    if not total:
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
            zero = timedelta() if isinstance(value, timedelta) else 0
            if value is not None and value < zero:
                raise ValueError(f"{field.name} must not be negative")

    def is_empty(self) -> bool:
        """No rule switched on (None and 0 both mean off): everything is kept."""
        return not any(getattr(self, field.name) for field in fields(self))


def _require_aware(what: str, moment: datetime) -> None:
    # a naive time would be read in the host's zone, making the result depend on the machine
    if moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {moment.isoformat()}")


@dataclass(frozen=True)
class SnapshotRef:
    name: str
    created: datetime
    verified: bool = True
    locked_until: datetime | None = None

    def __post_init__(self) -> None:
        _require_aware(f"{self.name}: created", self.created)
        if self.locked_until is not None:
            _require_aware(f"{self.name}: locked_until", self.locked_until)


@dataclass(frozen=True)
class Decision:
    snapshot: SnapshotRef
    keep: bool
    reasons: tuple[str, ...]


def _iso_week(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


# Each maps a UTC time to the label of its period; labels double as the reason text.
_PERIODS: dict[str, Callable[[datetime], str]] = {
    "hourly": lambda t: t.strftime("%Y-%m-%d %H:00"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": _iso_week,
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}


@dataclass(frozen=True)
class _Pool:
    """What the rules look at: the snapshots that are not future-dated, newest first."""

    ordered: list[SnapshotRef]
    verified: list[SnapshotRef]
    now: datetime | None


# A rule names the snapshots it keeps, each with its reason; every rule sees every snapshot.
_Rule = Callable[[_Pool, RetentionPolicy], Iterator[tuple[SnapshotRef, str]]]


def _keep_all_without_rules(
    pool: _Pool, policy: RetentionPolicy
) -> Iterator[tuple[SnapshotRef, str]]:
    if policy.is_empty():
        for snapshot in pool.ordered:
            yield snapshot, "no retention rule set"


def _keep_newest_verified(
    pool: _Pool, policy: RetentionPolicy
) -> Iterator[tuple[SnapshotRef, str]]:
    if pool.verified:
        yield pool.verified[0], "newest verified"


def _keep_last(pool: _Pool, policy: RetentionPolicy) -> Iterator[tuple[SnapshotRef, str]]:
    for position, snapshot in enumerate(pool.verified[: policy.keep_last or 0], start=1):
        yield snapshot, f"last {position}"


def _keep_per_period(period: str, label_of: Callable[[datetime], str]) -> _Rule:
    def rule(pool: _Pool, policy: RetentionPolicy) -> Iterator[tuple[SnapshotRef, str]]:
        limit: int | None = getattr(policy, f"keep_{period}")
        if not limit:
            return
        seen: set[str] = set()
        for snapshot in pool.verified:
            label = label_of(snapshot.created.astimezone(UTC))
            if label in seen:
                continue
            seen.add(label)
            yield snapshot, f"{period} {label}"
            if len(seen) == limit:
                return

    return rule


def _keep_within(pool: _Pool, policy: RetentionPolicy) -> Iterator[tuple[SnapshotRef, str]]:
    if not policy.keep_within or not pool.verified:
        return
    cutoff = pool.verified[0].created - policy.keep_within
    for snapshot in pool.ordered:
        if snapshot.created >= cutoff:
            yield snapshot, f"within {_format_duration(policy.keep_within)}"


def _keep_unverified_head(
    pool: _Pool, policy: RetentionPolicy
) -> Iterator[tuple[SnapshotRef, str]]:
    for snapshot in pool.ordered:
        if snapshot.verified:
            return
        yield snapshot, "unverified, no verified snapshot is newer"


def _keep_locked(pool: _Pool, policy: RetentionPolicy) -> Iterator[tuple[SnapshotRef, str]]:
    for snapshot in pool.ordered:
        locked = snapshot.locked_until
        if locked is not None and (pool.now is None or locked > pool.now):
            yield snapshot, f"object-locked until {locked.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


# in the order their reasons are listed
_RULES: tuple[_Rule, ...] = (
    _keep_all_without_rules,
    _keep_newest_verified,
    _keep_last,
    *(_keep_per_period(period, label_of) for period, label_of in _PERIODS.items()),
    _keep_within,
    _keep_unverified_head,
    _keep_locked,
)


def decide(
    snapshots: Iterable[SnapshotRef], policy: RetentionPolicy, *, now: datetime | None = None
) -> list[Decision]:
    """Keep or delete for each snapshot, newest first (ties by name), with the rules that kept it.

    Without `now` every lock is taken as still binding and no snapshot as future-dated.
    Snapshot names must be unique.
    """
    if now is not None:
        _require_aware("now", now)
    everything = sorted(snapshots, key=lambda s: (s.created.astimezone(UTC), s.name), reverse=True)
    duplicates = sorted(
        name for name, count in Counter(s.name for s in everything).items() if count > 1
    )
    if duplicates:
        raise ValueError(f"snapshot names must be unique: {', '.join(duplicates)}")
    reasons: dict[str, list[str]] = {s.name: [] for s in everything}
    future = {s.name for s in everything if now is not None and is_future(s.created, now)}
    for name in future:
        reasons[name].append(f"dated in the future (beyond now + {FUTURE_MINUTES} min)")
    ordered = [s for s in everything if s.name not in future]
    pool = _Pool(ordered, [s for s in ordered if s.verified], now)
    for rule in _RULES:
        for snapshot, reason in rule(pool, policy):
            reasons[snapshot.name].append(reason)
    return [
        Decision(s, bool(reasons[s.name]), tuple(reasons[s.name]) or ("no rule kept it",))
        for s in everything
    ]


def is_future(created: datetime, now: datetime) -> bool:
    """Dated beyond what clock drift explains: never the newest, never a retention anchor."""
    return created > now + FUTURE_TOLERANCE


def _format_duration(duration: timedelta) -> str:
    """Whole hours in the form parse_duration reads ("14d", "1d12h"); anything finer as-is."""
    if duration % timedelta(hours=1):
        return str(duration)
    days, hours = divmod(duration // timedelta(hours=1), 24)
    return (f"{days}d" if days else "") + (f"{hours}h" if hours else "") or "0h"
