"""Retention decisions checked against hand-computed expectations, plus properties."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcd_backupd.retention import RetentionPolicy, SnapshotRef, decide, parse_duration


def at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


# Hand-placed snapshots; weekdays and ISO weeks noted where the rules depend on them.
SMALL = {
    "A": at("2026-11-24 12:00"),  # Tue, 2026-W48
    "B": at("2026-11-24 00:00"),  # Tue, 2026-W48
    "C": at("2026-11-23 12:00"),  # Mon, 2026-W48
    "D": at("2026-11-22 12:00"),  # Sun, 2026-W47
    "E": at("2026-11-22 00:00"),  # Sun, 2026-W47
    "F": at("2026-11-10 12:00"),  # Tue, 2026-W46, after a 12-day gap
    "G": at("2026-10-31 12:00"),  # Sat, 2026-W44
    "H": at("2026-10-01 00:00"),  # Thu, 2026-W40
    "I": at("2026-09-15 00:00"),  # Tue, 2026-W38
    "J": at("2025-12-31 12:00"),  # Wed, ISO 2026-W01, calendar year 2025
    "K": at("2025-06-01 00:00"),  # Sun, 2025-W22
}


def refs(times: dict[str, datetime]) -> list[SnapshotRef]:
    return [SnapshotRef(name, created) for name, created in times.items()]


def kept(times: dict[str, datetime], policy: RetentionPolicy, **kw: object) -> set[str]:
    return {d.snapshot.name for d in decide(refs(times), policy, **kw) if d.keep}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RetentionPolicy(keep_last=3), "ABC"),
        (RetentionPolicy(keep_hourly=2), "AB"),
        (RetentionPolicy(keep_daily=3), "ACD"),
        (RetentionPolicy(keep_weekly=3), "ADF"),
        (RetentionPolicy(keep_monthly=3), "AGI"),
        (RetentionPolicy(keep_yearly=2), "AJ"),
        (RetentionPolicy(keep_yearly=5), "AJ"),
        (RetentionPolicy(keep_within=timedelta(days=14)), "ABCDEF"),
        (RetentionPolicy(keep_last=1, keep_weekly=2, keep_monthly=2), "ADG"),
        (RetentionPolicy(keep_daily=2, keep_monthly=4), "ACGIJ"),
        (RetentionPolicy(keep_last=2, keep_yearly=2, keep_within=timedelta(days=2)), "ABCDJ"),
        (RetentionPolicy(), "ABCDEFGHIJK"),
    ],
)
def test_rules_on_hand_placed_snapshots(policy: RetentionPolicy, expected: str) -> None:
    assert kept(SMALL, policy) == set(expected)


def test_reasons_name_the_rules() -> None:
    decisions = {
        d.snapshot.name: d
        for d in decide(refs(SMALL), RetentionPolicy(keep_last=1, keep_weekly=2, keep_monthly=2))
    }
    assert decisions["A"].reasons == (
        "newest verified",
        "last 1",
        "weekly 2026-W48",
        "monthly 2026-11",
    )
    assert decisions["D"].reasons == ("weekly 2026-W47",)
    assert decisions["G"].reasons == ("monthly 2026-10",)
    assert not decisions["B"].keep
    assert decisions["B"].reasons == ("no rule kept it",)


def test_iso_weeks_across_new_year() -> None:
    times = {
        "fri": at("2027-01-01 00:00"),  # ISO 2026-W53
        "thu": at("2026-12-31 00:00"),  # ISO 2026-W53 too
        "mon": at("2026-12-28 00:00"),  # ISO 2026-W53, the week's first day
        "sun": at("2026-12-27 00:00"),  # ISO 2026-W52
    }
    assert kept(times, RetentionPolicy(keep_weekly=2)) == {"fri", "sun"}
    assert kept(times, RetentionPolicy(keep_yearly=2)) == {"fri", "thu"}


def test_within_is_measured_from_the_newest_not_the_clock() -> None:
    newest = at("2026-10-01 00:00")
    times = {f"s{i}": newest - timedelta(days=i) for i in range(30)}
    clock = newest + timedelta(days=30)  # a month of failed backups since
    assert kept(times, RetentionPolicy(keep_within=timedelta(days=14)), now=clock) == {
        f"s{i}" for i in range(15)
    }


def long_series() -> dict[str, datetime]:
    """Three years of 12-hourly snapshots ending 2026-11-24 12:00, with a three-week outage
    (2026-10-01 .. 2026-10-21) and no snapshots at all in August 2026."""
    times: dict[str, datetime] = {}
    moment = at("2023-11-25 00:00")
    end = at("2026-11-24 12:00")
    while moment <= end:
        outage = at("2026-10-01 00:00") <= moment < at("2026-10-22 00:00")
        august = moment.year == 2026 and moment.month == 8
        if not (outage or august):
            times[moment.strftime("%Y%m%dT%H%M")] = moment
        moment += timedelta(hours=12)
    return times


def test_monthly_counts_months_that_hold_snapshots() -> None:
    decisions = [d for d in decide(refs(long_series()), RetentionPolicy(keep_monthly=12)) if d.keep]
    months = sorted(d.snapshot.created.strftime("%Y-%m") for d in decisions)
    # August 2026 holds nothing, so the twelve months reach back to November 2025
    assert months == [
        "2025-11", "2025-12", "2026-01", "2026-02", "2026-03", "2026-04",
        "2026-05", "2026-06", "2026-07", "2026-09", "2026-10", "2026-11",
    ]  # fmt: skip
    # the newest of each month: the last 12:00 snapshot of the month, or the newest overall
    names = sorted(d.snapshot.name for d in decisions)
    assert "20260731T1200" in names
    assert "20260930T1200" in names
    assert "20261031T1200" in names
    assert "20261124T1200" in names


def test_daily_skips_the_outage() -> None:
    decisions = [d for d in decide(refs(long_series()), RetentionPolicy(keep_daily=40)) if d.keep]
    days = {d.snapshot.created.date() for d in decisions}
    assert len(decisions) == 40
    # 34 days from 2026-10-22 to 2026-11-24, then six from before the outage
    assert min(days).isoformat() == "2026-09-25"
    assert not any(
        at("2026-10-01 00:00").date() <= day < at("2026-10-22 00:00").date() for day in days
    )


def test_weekly_and_yearly_on_the_long_series() -> None:
    decisions = decide(refs(long_series()), RetentionPolicy(keep_weekly=4, keep_yearly=10))
    kept_names = sorted(d.snapshot.name for d in decisions if d.keep)
    # weeks W48 (newest), W47 (Sun 22nd), W46 (Sun 15th), W45 (Sun 8th); years 2026, 2025, 2024,
    # 2023 (the newest of each year: 31 Dec 12:00, or the newest overall)
    assert kept_names == sorted(
        [
            "20261124T1200",
            "20261122T1200",
            "20261115T1200",
            "20261108T1200",
            "20251231T1200",
            "20241231T1200",
            "20231231T1200",
        ]
    )


def test_newest_verified_always_survives() -> None:
    times = [
        SnapshotRef("bad-newest", at("2026-11-24 12:00"), verified=False),
        SnapshotRef("good", at("2026-11-24 00:00")),
        SnapshotRef("older", at("2026-11-20 00:00")),
    ]
    decisions = {d.snapshot.name: d for d in decide(times, RetentionPolicy(keep_daily=1))}
    assert decisions["good"].keep
    assert "newest verified" in decisions["good"].reasons
    assert not decisions["bad-newest"].keep
    assert not decisions["older"].keep


def test_object_locked_snapshots_are_kept_until_the_lock_ends() -> None:
    now = at("2026-11-24 12:00")
    times = [
        SnapshotRef("new", now),
        SnapshotRef("locked", now - timedelta(days=5), locked_until=now + timedelta(days=1)),
        SnapshotRef("unlocked", now - timedelta(days=6), locked_until=now - timedelta(days=1)),
    ]
    decisions = {d.snapshot.name: d for d in decide(times, RetentionPolicy(keep_last=1), now=now)}
    assert decisions["locked"].keep
    assert decisions["locked"].reasons[0].startswith("object-locked until 2026-11-25")
    assert not decisions["unlocked"].keep


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("14d", timedelta(days=14)),
        ("2w", timedelta(weeks=2)),
        ("36h", timedelta(hours=36)),
        ("1w3d12h", timedelta(days=10, hours=12)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "14", "d", "3 months", "0d", "-1d", "1y"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_negative_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match="keep_daily must not be negative"):
        RetentionPolicy(keep_daily=-1)


# hypothesis takes naive bounds and attaches the time zone itself
moments = st.datetimes(
    min_value=datetime(2020, 1, 1),  # noqa: DTZ001
    max_value=datetime(2030, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
snapshot_sets = st.lists(
    st.tuples(moments, st.booleans()), min_size=1, max_size=60, unique_by=lambda t: t[0]
).map(
    lambda items: [
        SnapshotRef(f"s{i:03d}", created, verified) for i, (created, verified) in enumerate(items)
    ]
)
counts = st.one_of(st.none(), st.integers(min_value=0, max_value=8))
policies = st.builds(
    RetentionPolicy,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_yearly=counts,
    keep_within=st.one_of(
        st.none(), st.timedeltas(min_value=timedelta(hours=1), max_value=timedelta(days=400))
    ),
)


@settings(max_examples=300, deadline=None)
@given(snapshot_sets, policies, st.randoms(use_true_random=False))
def test_properties(
    snapshots: list[SnapshotRef], policy: RetentionPolicy, rng: random.Random
) -> None:
    decisions = decide(snapshots, policy)
    verified = [s for s in snapshots if s.verified]
    if verified:
        newest = max(verified, key=lambda s: (s.created, s.name))
        assert next(d for d in decisions if d.snapshot == newest).keep
    shuffled = list(snapshots)
    rng.shuffle(shuffled)
    assert decide(shuffled, policy) == decisions
    assert all(d.reasons for d in decisions)
    assert all((d.reasons == ("no rule kept it",)) != d.keep for d in decisions)
    if policy.keep_last:
        assert sum(d.keep for d in decisions) >= min(policy.keep_last, len(verified))
    if policy.is_empty():
        assert all(d.keep for d in decisions)
    assert [d.snapshot for d in decisions] == sorted(
        snapshots, key=lambda s: (s.created, s.name), reverse=True
    )
