"""What a host decides before a fire time, without etcd: acting at once when coordination is off,
and how long a standby waits for a snapshot another host is still writing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from etcd_backupd import coordination
from etcd_backupd.config import parse_config
from etcd_backupd.coordination import _wait_for_writers, plan, writer_patience
from etcd_backupd.destinations import Destination, build
from etcd_backupd.errors import DestinationError
from etcd_backupd.fsutil import part_path
from etcd_backupd.manifest import snapshot_name
from tests.harness.clock import SteppedClock

FIRE = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


def config(tmp_path: Path, *destinations: dict[str, Any], **top: Any) -> Any:
    return parse_config(
        {"state_dir": str(tmp_path / "state"), "destination": list(destinations), **top}
    )


def local(tmp_path: Path, name: str = "local") -> dict[str, Any]:
    return {"name": name, "type": "local", "path": str(tmp_path / name)}


def s3(name: str = "s3", **settings: Any) -> dict[str, Any]:
    return {"name": name, "type": "s3", "bucket": "backups", **settings}


class Writing:
    """A destination another host is writing into for `looks` looks; each look takes
    `seconds` on the clock. With `failing`, it cannot be asked at all."""

    def __init__(
        self,
        name: str,
        clock: SteppedClock,
        looks: int,
        seconds: float = 1.0,
        failing: bool = False,
    ) -> None:
        self.name = name
        self.asked = 0
        self._clock = clock
        self._looks = looks
        self._seconds = seconds
        self._failing = failing

    def in_progress(self, since: datetime) -> bool:
        assert since == FIRE
        self.asked += 1
        self._clock.advance(self._seconds)
        if self._failing:
            raise DestinationError("the store does not answer")
        return self.asked <= self._looks


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coordination, "_POLL_SECONDS", 0.001)


def test_without_coordination_every_host_backs_up_at_once(tmp_path: Path) -> None:
    settings = config(tmp_path, local(tmp_path), s3(), coordination="none")
    targets: list[Destination] = [build(d) for d in settings.destination]
    stopping = threading.Event()
    stopping.set()  # a plan that waited at all would come back "stopping"
    decided = plan(settings, targets, FIRE, stopping, SteppedClock(FIRE))
    assert (decided.role, decided.reason) == ("active", "coordination is off")
    assert decided.destinations == tuple(targets)


def test_a_standby_waits_as_long_as_a_live_writer_may_take(tmp_path: Path) -> None:
    hour = timedelta(hours=1).total_seconds()
    both = config(tmp_path, local(tmp_path), s3(deadline=600.0))
    targets = [build(d) for d in both.destination]
    # a local .part file counts as a killed run's after an hour untouched
    assert writer_patience(both, targets) == hour
    assert writer_patience(both, [t for t in targets if t.name == "s3"]) == 600.0
    slow = config(tmp_path, local(tmp_path), s3(deadline=7200.0))
    assert writer_patience(slow, [build(d) for d in slow.destination]) == 7200.0
    # the defaults: an hour either way, as before the bound was derived
    assert (
        writer_patience(
            config(tmp_path, s3()), [build(d) for d in config(tmp_path, s3()).destination]
        )
        == hour
    )
    assert writer_patience(both, []) == hour


def test_a_standby_goes_on_as_soon_as_nothing_is_being_written() -> None:
    clock = SteppedClock(FIRE)
    quiet = Writing("quiet", clock, looks=0)
    assert _wait_for_writers([quiet], FIRE, threading.Event(), 3600.0, clock)
    assert quiet.asked == 1


def test_a_standby_waits_while_a_snapshot_of_the_fire_time_is_written() -> None:
    clock = SteppedClock(FIRE)
    busy = Writing("busy", clock, looks=3)
    assert _wait_for_writers([busy], FIRE, threading.Event(), 3600.0, clock)
    assert busy.asked == 4


def test_a_writer_that_outlasts_the_bound_is_waited_for_no_longer() -> None:
    clock = SteppedClock(FIRE)
    dead = Writing("dead", clock, looks=10**6, seconds=1000.0)
    assert _wait_for_writers([dead], FIRE, threading.Event(), 3600.0, clock)
    assert dead.asked == 4  # looked at 0, 1000, 2000 and 3000 s; at 4000 s the bound is past


def test_a_destination_that_cannot_tell_holds_no_standby_up() -> None:
    clock = SteppedClock(FIRE)
    unknown = Writing("unknown", clock, looks=10**6, failing=True)
    assert _wait_for_writers([unknown], FIRE, threading.Event(), 3600.0, clock)
    assert unknown.asked == 1


def test_a_stopping_standby_stops_waiting(tmp_path: Path) -> None:
    directory = tmp_path / "local"
    directory.mkdir()
    settings = config(tmp_path, local(tmp_path))
    target = build(settings.destination[0])
    clock = SteppedClock(FIRE)
    stopping = threading.Event()
    stopping.set()
    # a snapshot of an earlier fire time being written says nothing about this one
    part_path(directory / snapshot_name("prod", FIRE - timedelta(minutes=1))).write_bytes(b"x")
    assert _wait_for_writers([target], FIRE, stopping, 3600.0, clock)
    # one of this fire time, written by another host now, keeps the standby waiting
    part_path(directory / snapshot_name("prod", FIRE + timedelta(seconds=3))).write_bytes(b"x")
    assert not _wait_for_writers([target], FIRE, stopping, 3600.0, clock)
