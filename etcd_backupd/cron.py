"""Cron expressions read as Vixie cron (cronie) and Kubernetes CronJobs read them; pure, time is
an argument.

Syntax: five fields, minute hour day-of-month month day-of-week, or one of the macros @yearly,
@annually, @monthly, @weekly, @daily, @midnight, @hourly. A field is a comma-separated list of
items: `*`, a number or name, a range `a-b`, each optionally with a step (`*/n`, `a-b/n`); `a/n`
means `a-<max>/n`, as Kubernetes reads it (Vixie cron refuses it). Months take `jan`-`dec`,
weekdays `sun`-`sat` (any case); weekday 0 and 7 are both Sunday, and a weekday range ending on
Sunday may be written `fri-sun` (5-0), as cronie reads it.

Days: when both day-of-month and day-of-week are restricted, a day matches when EITHER does;
when either field starts with `*` (`*/2` included, as in Vixie cron and Kubernetes), a day must
match both. A `*` after the first item of a day field is refused: Vixie cron looks only at the
first character, Kubernetes at every item, so they disagree about what `1,*` means.

Time zones, as cronie runs jobs across daylight-saving changes: a wall-clock time that a spring
change skips fires at the change when the expression names fixed times (neither minute nor hour
starts with `*`), and not at all otherwise; a wall-clock time that an autumn change repeats fires
once (the first time) for fixed times, and both times otherwise, so `0 * * * *` stays hourly.

An expression no date can match (`0 0 30 2 *`) is refused: the Gregorian calendar repeats every
400 years, weekdays included, so a search over 400 years proves it.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import cached_property, lru_cache
from zoneinfo import ZoneInfo

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NUMBER = re.compile(r"[0-9]+")
_GREGORIAN_CYCLE_YEARS = 400
_MINUTE = timedelta(minutes=1)


class CronError(ValueError):
    """An expression cron would refuse, or one that never fires; one line naming the field."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()


_MONTH_DAY_FIELD = _Field("day of month", 1, 31)
_WEEKDAY_FIELD = _Field("day of week", 0, 7, _WEEKDAYS)
_DAY_FIELDS = (_MONTH_DAY_FIELD, _WEEKDAY_FIELD)
_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _MONTH_DAY_FIELD,
    _Field("month", 1, 12, _MONTHS),
    _WEEKDAY_FIELD,
)


def _value(token: str, field: _Field) -> int:
    lowered = token.lower()
    if lowered in field.names:
        return field.names.index(lowered) + field.low
    if not _NUMBER.fullmatch(token):
        expected = "a number"
        if field.names:
            expected += f" or a name ({field.names[0]}-{field.names[-1]})"
        raise CronError(f"{field.name} field: {token!r} is not {expected}")
    value = int(token)
    if not field.low <= value <= field.high:
        raise CronError(f"{field.name} field: {value} is outside {field.low}-{field.high}")
    return value


def _item(text: str, field: _Field) -> set[int]:
    base, slash, step_text = text.partition("/")
    step = 1
    if slash:
        if not _NUMBER.fullmatch(step_text):
            raise CronError(f"{field.name} field: step {step_text!r} in {text!r} is not a number")
        step = int(step_text)
        if step == 0:
            raise CronError(f"{field.name} field: step 0 in {text!r} must be at least 1")
    if base == "*":
        first, last = field.low, field.high
    else:
        start, dash, end = base.partition("-")
        if not start:
            raise CronError(f"{field.name} field: {text!r} is missing the start of its range")
        if dash and not end:
            raise CronError(f"{field.name} field: {text!r} is missing the end of its range")
        first = _value(start, field)
        if dash:
            last = _value(end, field)
        elif slash:
            # `a/n` runs to the field's end; Kubernetes ends weekdays at 6 (Vixie refuses `a/n`)
            last = max(first, 6) if field is _WEEKDAY_FIELD else field.high
        else:
            last = first
        if last < first and field is _WEEKDAY_FIELD and last == 0:
            last = 7
        if last < first:
            raise CronError(f"{field.name} field: range {base!r} runs backwards")
    return set(range(first, last + 1, step))


def _parse_field(text: str, field: _Field) -> set[int]:
    items = text.split(",")
    if field in _DAY_FIELDS and not items[0].startswith("*"):
        for item in items[1:]:
            if item.startswith("*"):
                raise CronError(
                    f"{field.name} field: {text!r} has '*' after its first item, which cron "
                    "and Kubernetes read differently; start the field with it"
                )
    values: set[int] = set()
    for item in items:
        if not item:
            raise CronError(f"{field.name} field: {text!r} has an empty item")
        values |= _item(item, field)
    return values


def _cron_weekday(day: date) -> int:
    return (day.weekday() + 1) % 7


@dataclass(frozen=True)
class Cron:
    """One expression, parsed: which wall-clock minutes it names (no time zone yet)."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday; 7 is folded into 0
    days_or: bool  # both day fields restricted: a day matches either
    fixed_time: bool  # neither minute nor hour starts with '*'

    @classmethod
    def parse(cls, expression: str) -> Cron:
        text = expression.strip()
        if text.startswith("@"):
            if text == "@reboot":
                raise CronError(
                    f"{expression!r}: @reboot is not supported: the daemon backs up at fire "
                    "times; schedule.catch_up backs up at start when a fire time was missed"
                )
            if text not in MACROS:
                raise CronError(
                    f"{expression!r} is not a cron macro; expected one of {', '.join(MACROS)}"
                )
            text = MACROS[text]
        fields = text.split()
        if len(fields) != 5:
            raise CronError(
                f"{expression!r} has {len(fields)} fields; expected 5: minute hour "
                "day-of-month month day-of-week"
            )
        try:
            minutes, hours, days, months, weekdays = (
                _parse_field(f, spec) for f, spec in zip(fields, _FIELDS, strict=True)
            )
        except CronError as exc:
            raise CronError(f"{expression!r}: {exc}") from None
        if 7 in weekdays:
            weekdays = (weekdays - {7}) | {0}
        cron = cls(
            expression=expression,
            minutes=tuple(sorted(minutes)),
            hours=tuple(sorted(hours)),
            days=frozenset(days),
            months=frozenset(months),
            weekdays=frozenset(weekdays),
            days_or=not fields[2].startswith("*") and not fields[4].startswith("*"),
            fixed_time=not fields[0].startswith("*") and not fields[1].startswith("*"),
        )
        if cron.first_day(date(2000, 1, 1), _GREGORIAN_CYCLE_YEARS) is None:
            raise CronError(f"{expression!r}: never fires: none of its months has that day")
        return cron

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_month_day = day.day in self.days
        by_weekday = _cron_weekday(day) in self.weekdays
        return by_month_day or by_weekday if self.days_or else by_month_day and by_weekday

    def _days(self, start: date, years: int) -> Iterator[date]:
        """The matching days from `start` on, within `years` years (and before date.max)."""
        try:
            last = start.replace(year=start.year + years)
        except ValueError:  # 29 February in a year that is not a leap year, or past date.max
            last = date(min(start.year + years, date.max.year), 12, 31)
        day = start
        while day <= last:
            if day.month not in self.months:
                # jump to the first of the next month
                if day.month == 12:
                    if day.year == date.max.year:
                        return
                    day = date(day.year + 1, 1, 1)
                else:
                    day = date(day.year, day.month + 1, 1)
                continue
            if self.day_matches(day):
                yield day
            if day == date.max:
                return
            day += timedelta(days=1)

    def first_day(self, start: date, years: int) -> date | None:
        return next(self._days(start, years), None)

    @cached_property
    def _minutes_of_day(self) -> list[int]:
        return [h * 60 + m for h in self.hours for m in self.minutes]

    def _day_instants(self, day: date, zone: tzinfo) -> list[datetime]:
        """Every instant this expression fires on the wall-clock day `day` in `zone`, sorted."""
        instants: set[datetime] = set()
        for minute_of_day in self._minutes_of_day:
            wall = datetime(day.year, day.month, day.day, *divmod(minute_of_day, 60), tzinfo=zone)
            first = wall.astimezone(UTC)
            second = wall.replace(fold=1).astimezone(UTC)
            if first == second:
                instants.add(first)
            elif _same_wall_time(first.astimezone(zone), wall):
                # repeated by an autumn change: fold 0 is the first pass
                instants.update((first,) if self.fixed_time else (first, second))
            elif self.fixed_time:
                # skipped by a spring change: fold 1 reads it before the change, fold 0 after
                instants.add(_change_between(second, first, zone))
        return sorted(instants)

    def next_after(self, moment: datetime, zone: tzinfo) -> datetime | None:
        """The first fire time strictly after `moment` (aware), in `zone`; None only past
        the end of the calendar."""
        moment = moment.astimezone(UTC)
        # a day before: an autumn change across midnight repeats the previous day's last hour
        start = moment.astimezone(zone).date() - timedelta(days=1)
        found: datetime | None = None
        found_day: date | None = None
        for day in self._days(start, _GREGORIAN_CYCLE_YEARS + 1):
            if found_day is not None and day > found_day + timedelta(days=1):
                break
            offset = _steady_offset(day, zone)
            candidate = self._first_instant_after(day, zone, offset, moment)
            if candidate is not None and (found is None or candidate < found):
                found = candidate
            if found is not None:
                if offset is not None:
                    # its next midnight is unambiguous: no later day fires before it
                    break
                found_day = found_day or day
        return found.astimezone(zone) if found is not None else None

    def _first_instant_after(
        self, day: date, zone: tzinfo, offset: timedelta | None, moment: datetime
    ) -> datetime | None:
        if offset is None:
            return next((i for i in self._day_instants(day, zone) if i > moment), None)
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC) - offset
        index = 0
        if moment >= midnight:
            whole_minutes = (moment - midnight) // _MINUTE
            index = bisect_left(self._minutes_of_day, whole_minutes + 1)
        if index == len(self._minutes_of_day):
            return None
        return midnight + self._minutes_of_day[index] * _MINUTE


@lru_cache(maxsize=4096)
def _steady_offset(day: date, zone: tzinfo) -> timedelta | None:
    """The UTC offset of `zone` all through the wall-clock day, or None when it changes."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
    ends = (midnight, midnight + timedelta(days=1))  # wall-clock arithmetic: the next midnight
    offsets = {end.replace(fold=fold).utcoffset() for end in ends for fold in (0, 1)}
    if len(offsets) != 1:
        return None
    return offsets.pop()


def _same_wall_time(a: datetime, b: datetime) -> bool:
    return a.replace(tzinfo=None, fold=0) == b.replace(tzinfo=None, fold=0)


def _change_between(before: datetime, after: datetime, zone: tzinfo) -> datetime:
    """The instant, to the second, at which `zone`'s offset changes between two UTC instants."""
    old = before.astimezone(zone).utcoffset()
    low, high = 0, int((after - before).total_seconds())
    while high - low > 1:
        middle = (low + high) // 2
        if (before + timedelta(seconds=middle)).astimezone(zone).utcoffset() == old:
            low = middle
        else:
            high = middle
    return before + timedelta(seconds=high)


@dataclass(frozen=True)
class CronSchedule:
    """One or more expressions read in one time zone; it fires whenever any of them does."""

    crons: tuple[Cron, ...]
    zone: tzinfo

    @classmethod
    def parse(cls, expressions: str | Sequence[str], zone: str | tzinfo = UTC) -> CronSchedule:
        texts = [expressions] if isinstance(expressions, str) else list(expressions)
        if not texts:
            raise CronError("needs at least one cron expression")
        return cls(
            tuple(Cron.parse(text) for text in texts),
            ZoneInfo(zone) if isinstance(zone, str) else zone,
        )

    @property
    def expressions(self) -> list[str]:
        return [cron.expression for cron in self.crons]

    def next_after(self, moment: datetime) -> datetime | None:
        """The first fire time strictly after `moment`, as an aware time in the zone."""
        times = [t for cron in self.crons if (t := cron.next_after(moment, self.zone))]
        return min(times, default=None)

    def fire_times(self, after: datetime, count: int) -> list[datetime]:
        """The next `count` fire times strictly after `after`."""
        times: list[datetime] = []
        moment = after
        while len(times) < count and (fire := self.next_after(moment)) is not None:
            times.append(fire)
            moment = fire
        return times
