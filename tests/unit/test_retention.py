"""Retention decisions checked against hand-computed expectations, plus properties."""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcd_backupd.retention import RetentionPolicy, SnapshotRef, decide, parse_duration


def at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def refs(times: dict[str, datetime]) -> list[SnapshotRef]:
    return [SnapshotRef(name, created) for name, created in times.items()]


def kept(
    times: dict[str, datetime] | list[SnapshotRef],
    policy: RetentionPolicy,
    now: datetime | None = None,
) -> set[str]:
    snapshots = refs(times) if isinstance(times, dict) else times
    return {d.snapshot.name for d in decide(snapshots, policy, now=now) if d.keep}


def reasons_by_name(
    snapshots: list[SnapshotRef], policy: RetentionPolicy
) -> dict[str, tuple[str, ...]]:
    return {d.snapshot.name: d.reasons for d in decide(snapshots, policy)}


FULL = RetentionPolicy(keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=3)

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


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RetentionPolicy(keep_last=3), "ABC"),
        (RetentionPolicy(keep_hourly=2), "AB"),
        (RetentionPolicy(keep_daily=3), "ACD"),
        (RetentionPolicy(keep_weekly=3), "ADF"),
        (RetentionPolicy(keep_monthly=3), "AGI"),
        (RetentionPolicy(keep_yearly=2), "AJ"),
        # more periods asked for than exist: every period's newest, nothing more
        (RetentionPolicy(keep_yearly=5), "AJ"),
        (RetentionPolicy(keep_weekly=20), "ADFGHIJK"),
        # F sits exactly 14 days before A: the window's edge is inclusive
        (RetentionPolicy(keep_within=timedelta(days=14)), "ABCDEF"),
        (RetentionPolicy(keep_within=timedelta(days=14) - timedelta(seconds=1)), "ABCDE"),
        (RetentionPolicy(keep_last=1, keep_weekly=2, keep_monthly=2), "ADG"),
        (RetentionPolicy(keep_daily=2, keep_monthly=4), "ACGIJ"),
        (RetentionPolicy(keep_last=2, keep_yearly=2, keep_within=timedelta(days=2)), "ABCDJ"),
        # daily: A C D F G H I; weekly: A D F G; monthly: A G I J K; yearly: A J; last: A B C
        (FULL, "ABCDFGHIJK"),
        # 0 turns a rule off; a policy of zeros has no rule at all and keeps everything
        (RetentionPolicy(keep_last=1, keep_daily=0), "A"),
        (RetentionPolicy(keep_daily=0, keep_within=timedelta()), "ABCDEFGHIJK"),
        (RetentionPolicy(), "ABCDEFGHIJK"),
    ],
)
def test_rules_on_hand_placed_snapshots(policy: RetentionPolicy, expected: str) -> None:
    assert kept(SMALL, policy) == set(expected)


def test_reasons_name_the_rules() -> None:
    policy = RetentionPolicy(
        keep_last=1, keep_weekly=2, keep_monthly=2, keep_within=timedelta(hours=36)
    )
    reasons = reasons_by_name(refs(SMALL), policy)
    assert reasons["A"] == (
        "newest verified",
        "last 1",
        "weekly 2026-W48",
        "monthly 2026-11",
        "within 1d12h",
    )
    assert reasons["B"] == ("within 1d12h",)
    assert reasons["D"] == ("weekly 2026-W47",)
    assert reasons["G"] == ("monthly 2026-10",)
    assert reasons["E"] == ("no rule kept it",)
    assert reasons_by_name(refs(SMALL), RetentionPolicy(keep_hourly=1))["A"] == (
        "newest verified",
        "hourly 2026-11-24 12:00",
    )
    assert reasons_by_name(refs(SMALL), RetentionPolicy(keep_daily=2, keep_yearly=2))["J"] == (
        "yearly 2025",
    )
    assert reasons_by_name(refs(SMALL), RetentionPolicy())["K"] == ("no retention rule set",)


def year_end() -> dict[str, datetime]:
    """12-hourly snapshots from Sun 2026-12-20 to Mon 2027-01-04 with an outage from the 24th
    at noon to the 27th, after monthly ones on the 1st from 2025-10 to 2026-11 (March 2026
    missing) and one lone snapshot in 2024."""
    times = [at("2024-07-01 00:00")]
    times += [at(f"2025-{month:02d}-01 00:00") for month in (10, 11, 12)]
    times += [at(f"2026-{month:02d}-01 00:00") for month in range(1, 12) if month != 3]
    moment = at("2026-12-20 00:00")
    while moment <= at("2027-01-04 12:00"):
        if not at("2026-12-24 12:00") <= moment < at("2026-12-27 00:00"):
            times.append(moment)
        moment += timedelta(hours=12)
    return {t.strftime("%Y%m%dT%H"): t for t in times}


def test_all_rules_together_across_the_year_end() -> None:
    assert kept(year_end(), FULL) == {
        # last 3
        "20270104T12",
        "20270104T00",
        "20270103T12",
        # daily 7 (the newest of each day; the 04th and 03rd are above)
        "20270102T12",
        "20270101T12",
        "20261231T12",
        "20261230T12",
        "20261229T12",
        # weekly 4: 2027-W01 and 2026-W53 above, W52 ends on Sun 27th, W51 on Sun 20th
        "20261227T12",
        "20261220T12",
        # monthly 12: 2027-01 and 2026-12 above; March 2026 holds nothing, so back to 2026-01
        "20261101T00",
        "20261001T00",
        "20260901T00",
        "20260801T00",
        "20260701T00",
        "20260601T00",
        "20260501T00",
        "20260401T00",
        "20260201T00",
        "20260101T00",
        # yearly 3: 2027 and 2026 above, then 2025's newest; 2024 is the fourth year
        "20251201T00",
    }


def test_reasons_across_the_year_end() -> None:
    reasons = reasons_by_name(refs(year_end()), FULL)
    assert reasons["20270103T12"] == ("last 3", "daily 2027-01-03", "weekly 2026-W53")
    assert reasons["20261231T12"] == ("daily 2026-12-31", "monthly 2026-12", "yearly 2026")
    assert reasons["20261227T12"] == ("weekly 2026-W52",)
    assert reasons["20251201T00"] == ("yearly 2025",)
    assert reasons["20251101T00"] == ("no rule kept it",)
    assert reasons["20240701T00"] == ("no rule kept it",)


def test_iso_weeks_across_new_year() -> None:
    times = {
        "mon-jan": at("2027-01-04 00:00"),  # ISO 2027-W01
        "fri": at("2027-01-01 00:00"),  # ISO 2026-W53
        "thu": at("2026-12-31 00:00"),  # ISO 2026-W53 too
        "mon": at("2026-12-28 00:00"),  # ISO 2026-W53, the week's first day
        "sun": at("2026-12-27 00:00"),  # ISO 2026-W52
    }
    assert kept(times, RetentionPolicy(keep_weekly=3)) == {"mon-jan", "fri", "sun"}
    assert kept(times, RetentionPolicy(keep_yearly=2)) == {"mon-jan", "thu"}
    assert reasons_by_name(refs(times), RetentionPolicy(keep_weekly=3))["fri"] == (
        "weekly 2026-W53",
    )


def test_periods_are_utc_whatever_zone_the_time_is_written_in() -> None:
    berlin_winter = timezone(timedelta(hours=1))
    times = {
        # 00:30 on the 24th in UTC+1 is 23:30 on the 23rd in UTC
        "late": datetime(2026, 11, 24, 0, 30, tzinfo=berlin_winter),
        "early": at("2026-11-23 08:00"),
        "before": at("2026-11-22 08:00"),
    }
    assert kept(times, RetentionPolicy(keep_daily=2)) == {"late", "before"}
    assert reasons_by_name(refs(times), RetentionPolicy(keep_daily=1))["late"] == (
        "newest verified",
        "daily 2026-11-23",
    )


def test_within_is_measured_from_the_newest_not_the_clock() -> None:
    newest = at("2026-10-01 00:00")
    times = {f"s{i:02d}": newest - timedelta(days=i) for i in range(30)}
    clock = newest + timedelta(days=30)  # a month of failed backups since
    assert kept(times, RetentionPolicy(keep_within=timedelta(days=14)), now=clock) == {
        f"s{i:02d}" for i in range(15)
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


def test_all_rules_together_on_three_years() -> None:
    assert kept(long_series(), FULL) == {
        # last 3
        "20261124T1200",
        "20261124T0000",
        "20261123T1200",
        # daily 7: noon of each day back to Wed the 18th
        "20261122T1200",
        "20261121T1200",
        "20261120T1200",
        "20261119T1200",
        "20261118T1200",
        # weekly 4: W48 above, W47 (Sun 22nd) above, W46 ends Sun 15th, W45 Sun 8th
        "20261115T1200",
        "20261108T1200",
        # monthly 12: the last noon of each month; August 2026 is empty, so back to 2025-11
        "20261031T1200",
        "20260930T1200",
        "20260731T1200",
        "20260630T1200",
        "20260531T1200",
        "20260430T1200",
        "20260331T1200",
        "20260228T1200",
        "20260131T1200",
        "20251231T1200",
        "20251130T1200",
        # yearly 3: 2026 and 2025 above, then 2024's last
        "20241231T1200",
    }


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
    # weeks W48 (newest), W47 (Sun 22nd), W46 (Sun 15th), W45 (Sun 8th); years 2026, 2025, 2024,
    # 2023 (the newest of each year: 31 Dec 12:00, or the newest overall)
    assert kept(long_series(), RetentionPolicy(keep_weekly=4, keep_yearly=10)) == {
        "20261124T1200",
        "20261122T1200",
        "20261115T1200",
        "20261108T1200",
        "20251231T1200",
        "20241231T1200",
        "20231231T1200",
    }


def test_newest_verified_survives_a_bad_newer_one() -> None:
    snapshots = [
        SnapshotRef("bad-newest", at("2026-11-24 12:00"), verified=False),
        SnapshotRef("good", at("2026-11-24 00:00")),
        SnapshotRef("older", at("2026-11-20 00:00")),
    ]
    reasons = reasons_by_name(snapshots, RetentionPolicy(keep_daily=1))
    # the bad one does not take the 24th's slot from the good one
    assert reasons["good"] == ("newest verified", "daily 2026-11-24")
    # ...but it is newer than anything verified, so it stays to be looked at
    assert reasons["bad-newest"] == ("unverified, no verified snapshot is newer",)
    assert reasons["older"] == ("no rule kept it",)


def test_unverified_snapshots_fill_no_slots() -> None:
    snapshots = [
        SnapshotRef("v24", at("2026-11-24 12:00")),
        SnapshotRef("u24", at("2026-11-24 00:00"), verified=False),
        SnapshotRef("u23", at("2026-11-23 12:00"), verified=False),
        SnapshotRef("v23", at("2026-11-23 00:00")),
        SnapshotRef("v22", at("2026-11-22 00:00")),
    ]
    assert kept(snapshots, RetentionPolicy(keep_last=2)) == {"v24", "v23"}
    assert kept(snapshots, RetentionPolicy(keep_daily=2)) == {"v24", "v23"}
    assert kept(snapshots, RetentionPolicy(keep_within=timedelta(days=1))) == {
        "v24",
        "u24",
        "u23",
    }


def test_weeks_of_bad_snapshots_do_not_slide_the_window_past_the_good_ones() -> None:
    good_until = at("2026-11-01 00:00")
    good = [SnapshotRef(f"v{i:02d}", good_until - timedelta(days=i)) for i in range(21)]
    bad = [
        SnapshotRef(f"u{i:02d}", good_until + timedelta(days=i), verified=False)
        for i in range(1, 31)
    ]
    policy = RetentionPolicy(keep_within=timedelta(days=14))
    assert kept(good + bad, policy) == {f"v{i:02d}" for i in range(15)} | {s.name for s in bad}
    # verification works again: the window follows the new good snapshot, the old bad ones go
    recovered = SnapshotRef("v-new", good_until + timedelta(days=31))
    assert kept([*good, *bad, recovered], policy) == {"v-new"} | {
        f"u{i:02d}" for i in range(17, 31)
    }


def test_nothing_verified_deletes_nothing() -> None:
    snapshots = [
        SnapshotRef(f"u{i}", at("2026-11-24 00:00") - timedelta(days=i), verified=False)
        for i in range(5)
    ]
    assert kept(snapshots, RetentionPolicy(keep_last=1, keep_daily=1)) == {
        s.name for s in snapshots
    }


def test_object_locked_snapshots_are_kept_until_the_lock_ends() -> None:
    now = at("2026-11-24 12:00")
    snapshots = [
        SnapshotRef("new", now),
        SnapshotRef("locked", now - timedelta(days=5), locked_until=now + timedelta(days=1)),
        SnapshotRef("unlocked", now - timedelta(days=6), locked_until=now - timedelta(days=1)),
        SnapshotRef("lock-ends-now", now - timedelta(days=7), locked_until=now),
    ]
    decisions = {
        d.snapshot.name: d for d in decide(snapshots, RetentionPolicy(keep_last=1), now=now)
    }
    assert decisions["locked"].reasons == ("object-locked until 2026-11-25T12:00:00Z",)
    assert not decisions["unlocked"].keep
    assert not decisions["lock-ends-now"].keep
    # without a clock, no lock can be shown to have ended
    assert kept(snapshots, RetentionPolicy(keep_last=1)) == {
        "new",
        "locked",
        "unlocked",
        "lock-ends-now",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("14d", timedelta(days=14)),
        ("2w", timedelta(weeks=2)),
        ("36h", timedelta(hours=36)),
        ("1w3d12h", timedelta(days=10, hours=12)),
        (" 1W 3d ", timedelta(days=10)),
        ("0d12h", timedelta(hours=12)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not a duration"),
        ("14", "is not a duration"),
        ("d", "is not a duration"),
        ("-1d", "is not a duration"),
        ("1.5d", "is not a duration"),
        ("3 months", 'unknown unit "months"'),
        ("0d", "longer than zero"),
        ("1y", "365d"),
        ("6m", "months or minutes"),
        ("99999999999w", "too long"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_within_reason_uses_the_duration_as_written() -> None:
    snapshots = [SnapshotRef("only", at("2026-11-24 00:00"))]
    assert decide(snapshots, RetentionPolicy(keep_within=parse_duration("2w")))[0].reasons == (
        "newest verified",
        "within 14d",
    )
    assert decide(snapshots, RetentionPolicy(keep_within=timedelta(minutes=90)))[0].reasons == (
        "newest verified",
        "within 1:30:00",
    )


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="keep_daily must not be negative"):
        RetentionPolicy(keep_daily=-1)
    with pytest.raises(ValueError, match="keep_within must not be negative"):
        RetentionPolicy(keep_within=timedelta(days=-1))
    with pytest.raises(ValueError, match="timezone-aware"):
        SnapshotRef("naive", datetime(2026, 11, 24))  # noqa: DTZ001
    with pytest.raises(ValueError, match="timezone-aware"):
        decide([], RetentionPolicy(), now=datetime(2026, 11, 24))  # noqa: DTZ001
    with pytest.raises(ValueError, match="must be unique: twice"):
        decide(
            [
                SnapshotRef("twice", at("2026-11-24 00:00")),
                SnapshotRef("twice", at("2026-11-23 00:00")),
            ],
            RetentionPolicy(),
        )


# hypothesis takes naive bounds and attaches the time zone itself
START = datetime(2020, 1, 1, tzinfo=UTC)
free_moments = st.datetimes(
    min_value=datetime(2020, 1, 1),  # noqa: DTZ001
    max_value=datetime(2030, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
# a 6-hour grid over three years: equal times (ties) and shared periods come up often
grid_moments = st.integers(min_value=0, max_value=4400).map(
    lambda k: START + k * timedelta(hours=6)
)
zones = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))])
locks = st.one_of(st.none(), grid_moments)
snapshot_lists = st.lists(
    st.tuples(st.one_of(grid_moments, free_moments), zones, st.booleans(), locks),
    max_size=60,
).map(
    lambda items: [
        SnapshotRef(f"s{i:03d}", created.astimezone(zone), verified, locked_until)
        for i, (created, zone, verified, locked_until) in enumerate(items)
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
        st.none(), st.timedeltas(min_value=timedelta(), max_value=timedelta(days=400))
    ),
)
clocks = st.one_of(st.none(), grid_moments)


def newest_first(snapshots: list[SnapshotRef]) -> list[SnapshotRef]:
    return sorted(snapshots, key=lambda s: (s.created, s.name), reverse=True)


@settings(max_examples=400, deadline=None)
@given(snapshot_lists, policies, clocks, st.randoms(use_true_random=False))
def test_properties(
    snapshots: list[SnapshotRef],
    policy: RetentionPolicy,
    now: datetime | None,
    rng: random.Random,
) -> None:
    decisions = decide(snapshots, policy, now=now)
    keep = {d.snapshot.name for d in decisions if d.keep}
    verified = newest_first([s for s in snapshots if s.verified])

    assert [d.snapshot for d in decisions] == newest_first(snapshots)
    if verified:
        assert verified[0].name in keep
    # an unverified snapshot newer than every verified one is never deleted
    for snapshot in newest_first(snapshots):
        if snapshot.verified:
            break
        assert snapshot.name in keep
    shuffled = list(snapshots)
    rng.shuffle(shuffled)
    assert decide(shuffled, policy, now=now) == decisions
    # every decision says why, and "no rule kept it" exactly on the deleted ones
    assert all(d.reasons for d in decisions)
    assert all((d.reasons == ("no rule kept it",)) != d.keep for d in decisions)
    if policy.keep_last:
        assert len(keep & {s.name for s in verified}) >= min(policy.keep_last, len(verified))
    if policy.is_empty():
        assert keep == {s.name for s in snapshots}
    # pruning again with the same policy deletes nothing more, for the same reasons
    survivors = [d.snapshot for d in decisions if d.keep]
    assert decide(survivors, policy, now=now) == [d for d in decisions if d.keep]
    # unverified snapshots cannot change what happens to verified ones
    assert decide(verified, policy, now=now) == [d for d in decisions if d.snapshot.verified]


PERIOD_OF: dict[str, Callable[[datetime], Hashable]] = {
    "hourly": lambda t: (t.date(), t.hour),
    "daily": lambda t: t.date(),
    "weekly": lambda t: t.isocalendar()[:2],
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: t.year,
}


@settings(max_examples=300, deadline=None)
@given(snapshot_lists, st.sampled_from(sorted(PERIOD_OF)), st.integers(min_value=1, max_value=8))
def test_period_rules_match_a_reference(
    snapshots: list[SnapshotRef], period: str, limit: int
) -> None:
    """Group by period, take the newest of each, keep the newest `limit` of those."""
    verified = [replace(s, locked_until=None) for s in snapshots if s.verified]
    newest_of: dict[Hashable, SnapshotRef] = {}
    for snapshot in newest_first(verified):
        newest_of.setdefault(PERIOD_OF[period](snapshot.created.astimezone(UTC)), snapshot)
    expected = {s.name for s in newest_first(list(newest_of.values()))[:limit]}
    decisions = decide(verified, RetentionPolicy(**{f"keep_{period}": limit}))  # type: ignore[arg-type]
    assert {d.snapshot.name for d in decisions if d.keep} == expected


def test_a_future_dated_snapshot_is_kept_but_anchors_nothing() -> None:
    now = at("2026-11-24 12:00")
    times = {
        "planted": now + timedelta(days=2),
        "drift": now + timedelta(minutes=4),
        "new": now - timedelta(hours=1),
        "old": now - timedelta(days=3),
    }
    decisions = {d.snapshot.name: d for d in decide(refs(times), WITHIN_1D_LAST_1, now=now)}
    assert decisions["planted"].keep
    assert decisions["planted"].reasons == ("dated in the future (beyond now + 5 min)",)
    # a few minutes of drift is believed: it is the newest and anchors the window
    assert "newest verified" in decisions["drift"].reasons
    assert "within 1d" in decisions["new"].reasons
    assert not decisions["old"].keep
    # without `now` nothing can be told apart, as before
    assert "newest verified" in reasons_by_name(refs(times), WITHIN_1D_LAST_1)["planted"]


WITHIN_1D_LAST_1 = RetentionPolicy(keep_last=1, keep_within=timedelta(days=1))
