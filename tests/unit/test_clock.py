"""The shared clock: an aware UTC now, a monotonic reading, and the per-stage timer of a cycle."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from etcd_backupd.clock import SYSTEM_CLOCK, StageTimer
from tests.harness.clock import SteppedClock

T0 = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


def test_the_system_clock_reads_aware_utc_and_never_steps_back() -> None:
    before = datetime.now(UTC)
    now = SYSTEM_CLOCK.now()
    assert now.utcoffset() is not None and now.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert before <= now <= datetime.now(UTC)
    readings = [SYSTEM_CLOCK.monotonic() for _ in range(1000)]
    assert readings == sorted(readings)


def test_each_stage_gets_the_seconds_spent_in_it() -> None:
    clock = SteppedClock(T0)
    stages = StageTimer(clock)
    with stages.stage("snapshot"):
        assert stages.current == "snapshot"
        clock.advance(3.0)
    clock.advance(100.0)  # between stages: counted nowhere
    with stages.stage("verify"):
        assert stages.current == "verify"
        clock.advance(0.25)
    assert stages.seconds == {"snapshot": 3.0, "verify": 0.25}


def test_a_stage_entered_twice_adds_up() -> None:
    clock = SteppedClock(T0)
    stages = StageTimer(clock)
    for seconds in (1.0, 2.5):
        with stages.stage("ship"):
            clock.advance(seconds)
    assert stages.seconds == {"ship": 3.5}


def test_a_stage_that_fails_stays_the_current_one_and_its_time_is_kept() -> None:
    clock = SteppedClock(T0)
    stages = StageTimer(clock)
    with stages.stage("snapshot"):
        clock.advance(1.0)
    with pytest.raises(RuntimeError), stages.stage("verify"):
        clock.advance(2.0)
        raise RuntimeError("damaged")
    assert stages.current == "verify"
    assert stages.seconds == {"snapshot": 1.0, "verify": 2.0}


def test_a_timer_starts_with_no_stage() -> None:
    stages = StageTimer(SteppedClock(T0))
    assert (stages.current, stages.seconds) == ("", {})
