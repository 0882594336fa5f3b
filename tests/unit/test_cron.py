"""Cron expressions against fire times worked out by hand on a calendar, as Vixie cron and
Kubernetes CronJobs fire them. 2026-11-28 is a Saturday; 2026-11-30 a Monday."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from etcd_backupd.cron import CronError, CronSchedule

SATURDAY_NOON = "2026-11-28T12:00:00+00:00"
THURSDAY_NOON = "2026-12-03T12:00:00+00:00"


def fires(expression: str | list[str], after: str, count: int = 3, zone: str = "UTC") -> list[str]:
    schedule = CronSchedule.parse(expression, zone)
    return [t.isoformat() for t in schedule.fire_times(datetime.fromisoformat(after), count)]


def utc(*days_and_times: str) -> list[str]:
    return [f"{text}:00+00:00" for text in days_and_times]


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # weekdays count from Sunday = 0; 7 is Sunday too
        (
            "0 3 * * 1",
            SATURDAY_NOON,
            utc("2026-11-30T03:00", "2026-12-07T03:00", "2026-12-14T03:00"),
        ),
        (
            "0 3 * * 0",
            SATURDAY_NOON,
            utc("2026-11-29T03:00", "2026-12-06T03:00", "2026-12-13T03:00"),
        ),
        (
            "0 3 * * 7",
            SATURDAY_NOON,
            utc("2026-11-29T03:00", "2026-12-06T03:00", "2026-12-13T03:00"),
        ),
        (
            "0 3 * * sun",
            SATURDAY_NOON,
            utc("2026-11-29T03:00", "2026-12-06T03:00", "2026-12-13T03:00"),
        ),
        (
            "0 3 * * MON",
            SATURDAY_NOON,
            utc("2026-11-30T03:00", "2026-12-07T03:00", "2026-12-14T03:00"),
        ),
        (
            "0 3 * * 6",
            SATURDAY_NOON,
            utc("2026-12-05T03:00", "2026-12-12T03:00", "2026-12-19T03:00"),
        ),
        # 1-5 is Monday to Friday
        (
            "0 3 * * 1-5",
            THURSDAY_NOON,
            utc("2026-12-04T03:00", "2026-12-07T03:00", "2026-12-08T03:00"),
        ),
        (
            "0 3 * * mon-fri",
            THURSDAY_NOON,
            utc("2026-12-04T03:00", "2026-12-07T03:00", "2026-12-08T03:00"),
        ),
        (
            "0 3 * * 5-7",
            THURSDAY_NOON,
            utc("2026-12-04T03:00", "2026-12-05T03:00", "2026-12-06T03:00"),
        ),
        (
            "0 3 * * fri-sun",
            THURSDAY_NOON,
            utc("2026-12-04T03:00", "2026-12-05T03:00", "2026-12-06T03:00"),
        ),
        (
            "0 3 * * 6-0",
            THURSDAY_NOON,
            utc("2026-12-05T03:00", "2026-12-06T03:00", "2026-12-12T03:00"),
        ),
        (
            "0 0 * * */2",
            SATURDAY_NOON,
            utc("2026-11-29T00:00", "2026-12-01T00:00", "2026-12-03T00:00"),
        ),
        (
            "0 0 * * 1-7/2",
            SATURDAY_NOON,
            utc("2026-11-29T00:00", "2026-11-30T00:00", "2026-12-02T00:00"),
        ),
        # Kubernetes reads `a/n` to the end of the week (Saturday)
        (
            "0 0 * * 5/1",
            THURSDAY_NOON,
            utc("2026-12-04T00:00", "2026-12-05T00:00", "2026-12-11T00:00"),
        ),
        ("0 0 * * 7/2", SATURDAY_NOON, utc("2026-11-29T00:00", "2026-12-06T00:00")),
        # both day fields restricted: either matches (the 1st and 15th, and every Friday)
        (
            "0 0 1,15 * fri",
            SATURDAY_NOON,
            utc("2026-12-01T00:00", "2026-12-04T00:00", "2026-12-11T00:00", "2026-12-15T00:00"),
        ),
        # February has no 30th, but Mondays: either field is enough
        (
            "0 0 30 2 mon",
            SATURDAY_NOON,
            utc("2027-02-01T00:00", "2027-02-08T00:00", "2027-02-15T00:00"),
        ),
        # 1-31 restricts (it does not start with '*'), so any Monday or any day matches: every day
        (
            "0 0 1-31 * mon",
            SATURDAY_NOON,
            utc("2026-11-29T00:00", "2026-11-30T00:00", "2026-12-01T00:00"),
        ),
        # the month still has to match: 1 January and January's Mondays
        (
            "0 0 1 jan mon",
            SATURDAY_NOON,
            utc("2027-01-01T00:00", "2027-01-04T00:00", "2027-01-11T00:00"),
        ),
        # a day field starting with '*' (steps too) restricts nothing on its own: both must match
        (
            "0 0 */2 * 1",
            SATURDAY_NOON,
            utc("2026-12-07T00:00", "2026-12-21T00:00", "2027-01-11T00:00"),
        ),
        (
            "30 6 * * wed",
            SATURDAY_NOON,
            utc("2026-12-02T06:30", "2026-12-09T06:30", "2026-12-16T06:30"),
        ),
        (
            "0 0 31 * *",
            SATURDAY_NOON,
            utc("2026-12-31T00:00", "2027-01-31T00:00", "2027-03-31T00:00"),
        ),
        (
            "0 0 29 2 *",
            SATURDAY_NOON,
            utc("2028-02-29T00:00", "2032-02-29T00:00", "2036-02-29T00:00"),
        ),
        # macros
        ("@yearly", SATURDAY_NOON, utc("2027-01-01T00:00", "2028-01-01T00:00", "2029-01-01T00:00")),
        (
            "@annually",
            SATURDAY_NOON,
            utc("2027-01-01T00:00", "2028-01-01T00:00", "2029-01-01T00:00"),
        ),
        (
            "@monthly",
            SATURDAY_NOON,
            utc("2026-12-01T00:00", "2027-01-01T00:00", "2027-02-01T00:00"),
        ),
        ("@weekly", SATURDAY_NOON, utc("2026-11-29T00:00", "2026-12-06T00:00", "2026-12-13T00:00")),
        ("@daily", SATURDAY_NOON, utc("2026-11-29T00:00", "2026-11-30T00:00", "2026-12-01T00:00")),
        (
            "@midnight",
            SATURDAY_NOON,
            utc("2026-11-29T00:00", "2026-11-30T00:00", "2026-12-01T00:00"),
        ),
        ("@hourly", SATURDAY_NOON, utc("2026-11-28T13:00", "2026-11-28T14:00", "2026-11-28T15:00")),
        # steps, ranges and lists
        (
            "*/15 * * * *",
            SATURDAY_NOON,
            utc("2026-11-28T12:15", "2026-11-28T12:30", "2026-11-28T12:45"),
        ),
        (
            "5/20 * * * *",
            SATURDAY_NOON,
            utc("2026-11-28T12:05", "2026-11-28T12:25", "2026-11-28T12:45"),
        ),
        (
            "10-30/10 9 * * *",
            SATURDAY_NOON,
            utc("2026-11-29T09:10", "2026-11-29T09:20", "2026-11-29T09:30"),
        ),
        (
            "0 */5 * * *",
            SATURDAY_NOON,
            utc("2026-11-28T15:00", "2026-11-28T20:00", "2026-11-29T00:00"),
        ),
        (
            "0 8-10,17 * * *",
            SATURDAY_NOON,
            utc("2026-11-28T17:00", "2026-11-29T08:00", "2026-11-29T09:00"),
        ),
        (
            "0 */12 * * *",
            SATURDAY_NOON,
            utc("2026-11-29T00:00", "2026-11-29T12:00", "2026-11-30T00:00"),
        ),
        # month names, any case
        (
            "0 0 1 jan,jul *",
            SATURDAY_NOON,
            utc("2027-01-01T00:00", "2027-07-01T00:00", "2028-01-01T00:00"),
        ),
        (
            "0 0 1 FEB-Apr *",
            SATURDAY_NOON,
            utc("2027-02-01T00:00", "2027-03-01T00:00", "2027-04-01T00:00"),
        ),
        # several expressions: whichever fires first
        (
            ["0 3 * * 1", "0 3 * * 4"],
            SATURDAY_NOON,
            utc("2026-11-30T03:00", "2026-12-03T03:00", "2026-12-07T03:00"),
        ),
    ],
)
def test_fire_times(expression: str | list[str], after: str, expected: list[str]) -> None:
    assert fires(expression, after, len(expected)) == expected


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # 29 March 2026: 02:00 CET becomes 03:00 CEST. A fixed time in the skipped hour fires at
        # the change, once; a '*' schedule has no 02:30 that day.
        (
            "30 2 * * *",
            "2026-03-28T12:00:00+00:00",
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"],
        ),
        (
            "0,30 2 * * *",
            "2026-03-28T12:00:00+00:00",
            ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        ),
        (
            "30 * * * *",
            "2026-03-29T00:00:00+00:00",
            ["2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00", "2026-03-29T04:30:00+02:00"],
        ),
        (
            "*/30 2 * * *",
            "2026-03-28T12:00:00+00:00",
            ["2026-03-30T02:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:00:00+02:00"],
        ),
        # 25 October 2026: 03:00 CEST becomes 02:00 CET. A fixed time in the repeated hour fires
        # once (the first time); a '*' schedule fires in both, so hourly stays hourly.
        (
            "30 2 * * *",
            "2026-10-24T12:00:00+00:00",
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"],
        ),
        (
            "30 * * * *",
            "2026-10-24T23:00:00+00:00",
            [
                "2026-10-25T01:30:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-25T03:30:00+01:00",
            ],
        ),
        # from inside the repeated hour, its second pass is still ahead
        ("30 * * * *", "2026-10-25T02:45:00+02:00", ["2026-10-25T02:30:00+01:00"]),
        ("0 3 * * *", "2026-03-28T12:00:00+00:00", ["2026-03-29T03:00:00+02:00"]),
    ],
)
def test_daylight_saving_in_berlin(expression: str, after: str, expected: list[str]) -> None:
    assert fires(expression, after, len(expected), "Europe/Berlin") == expected


def test_daylight_saving_west_of_utc() -> None:
    # 8 March 2026 in New York: 02:00 EST becomes 03:00 EDT
    assert fires("30 2 * * *", "2026-03-07T12:00:00+00:00", 2, "America/New_York") == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]


def test_fire_times_are_in_the_schedules_zone_whatever_the_zone_asked_in() -> None:
    schedule = CronSchedule.parse("0 3 * * 1", "Europe/Berlin")
    after = datetime.fromisoformat("2026-11-28T12:00:00-05:00")
    assert schedule.next_after(after) == datetime.fromisoformat("2026-11-30T03:00:00+01:00")
    assert str(schedule.next_after(after).tzinfo) == "Europe/Berlin"  # type: ignore[union-attr]


def test_a_fire_time_is_not_its_own_next() -> None:
    schedule = CronSchedule.parse("0 3 * * *")
    fire = datetime(2026, 11, 29, 3, tzinfo=UTC)
    assert schedule.next_after(fire) == datetime(2026, 11, 30, 3, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("0 0 31 2 *", "never fires"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("5- * * * *", "minute field: '5-' is missing the end of its range"),
        ("-5 * * * *", "minute field: '-5' is missing the start of its range"),
        ("5-3 * * * *", "minute field: range '5-3' runs backwards"),
        ("0 0 * * 5-1", "day of week field: range '5-1' runs backwards"),
        ("*/0 * * * *", "minute field: step 0 in '*/0' must be at least 1"),
        ("*/x * * * *", "minute field: step 'x' in '*/x' is not a number"),
        ("60 * * * *", "minute field: 60 is outside 0-59"),
        ("0 24 * * *", "hour field: 24 is outside 0-23"),
        ("0 0 0 * *", "day of month field: 0 is outside 1-31"),
        ("0 0 32 * *", "day of month field: 32 is outside 1-31"),
        ("0 0 * 0 *", "month field: 0 is outside 1-12"),
        ("0 0 * 13 *", "month field: 13 is outside 1-12"),
        ("0 0 * * 8", "day of week field: 8 is outside 0-7"),
        ("0 0 * * monday", "day of week field: 'monday' is not a number or a name (sun-sat)"),
        ("0 0 * mon *", "month field: 'mon' is not a number or a name (jan-dec)"),
        ("0 0 L * *", "day of month field: 'L' is not a number"),
        ("0 0 ? * *", "day of month field: '?' is not a number"),
        ("0 0 * * 5#3", "day of week field: '5#3' is not a number"),
        ("1,,2 * * * *", "minute field: '1,,2' has an empty item"),
        ("0 0 1,* * *", "day of month field: '1,*' has '*' after its first item"),
        ("0 0 * * 1,*/2", "day of week field: '1,*/2' has '*' after its first item"),
        ("@reboot", "@reboot is not supported"),
        ("@every 1h", "is not a cron macro; expected one of @yearly"),
        ("@daily 3", "is not a cron macro"),
        ("0 */12 * *", "has 4 fields; expected 5"),
        ("0 0 0 * * *", "has 6 fields; expected 5"),
        ("", "has 0 fields"),
    ],
)
def test_refused_with_the_field_and_the_reason(expression: str, reason: str) -> None:
    with pytest.raises(CronError) as caught:
        CronSchedule.parse(expression)
    message = str(caught.value)
    assert reason in message
    assert message.startswith(repr(expression))
    assert "\n" not in message


def test_a_list_needs_an_expression() -> None:
    with pytest.raises(CronError, match="needs at least one cron expression"):
        CronSchedule.parse([])


def test_a_steady_schedule_gives_its_interval() -> None:
    schedule = CronSchedule.parse("0 */6 * * *", "Europe/Berlin")
    first, second = schedule.fire_times(datetime(2026, 11, 28, 12, 1, tzinfo=UTC), 2)
    assert (second - first).total_seconds() == 6 * 3600
