"""Runs that write into the same destination take turns: a run claims each destination, leaves
one another run holds, and says so when it is left with none."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from etcd_backupd.config_destinations import LocalDestination
from etcd_backupd.destinations import Destination
from etcd_backupd.destinations.local import LocalDirectory
from etcd_backupd.errors import DestinationBusy, DestinationError
from etcd_backupd.runlock import LOCK_FOLDER, Claims
from tests.harness.clock import FixedClock

MOMENT = datetime(2026, 12, 2, 3, 0, 7, tzinfo=UTC)


def local(tmp_path: Path, name: str, folder: str | None = None) -> Destination:
    path = tmp_path / (folder or name)
    return LocalDirectory(LocalDestination(type="local", name=name, path=path))


def test_a_second_run_leaves_a_claimed_destination_to_the_first(tmp_path: Path) -> None:
    state = tmp_path / "state"
    shared, own = local(tmp_path, "shared"), local(tmp_path, "own")
    first = Claims(state, FixedClock(MOMENT))
    assert first.take([shared]) == [shared]
    second = Claims(state)
    try:
        assert second.take([shared, own]) == [own]
        assert "another run (pid " in second.busy["shared"]
        assert "since 2026-12-02T03:00:07Z" in second.busy["shared"]  # the holder's clock
    finally:
        second.release()
        first.release()
    again = Claims(state)
    assert again.take([shared]) == [shared]
    again.release()


def test_two_names_for_one_directory_are_one_claim(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = Claims(state)
    first.take([local(tmp_path, "a", "backups")])
    try:
        with pytest.raises(DestinationBusy, match="another run is backing up to every destination"):
            Claims(state).take([local(tmp_path, "b", "backups")])
    finally:
        first.release()


def test_a_state_dir_that_cannot_hold_locks_fails_every_destination(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_bytes(b"")
    claims = Claims(blocker)
    with pytest.raises(DestinationError, match="no destination can take the snapshot"):
        claims.take([local(tmp_path, "one")])
    assert f"cannot create the lock file {blocker / LOCK_FOLDER}" in claims.failures["one"]
