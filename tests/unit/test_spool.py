"""The spool file: written as the stream arrives, hashed and handed on in order, sealed with
etcd's trailer; and where it goes (a local destination first, else a scratch directory)."""

from __future__ import annotations

import hashlib
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from etcd_backupd.config_destinations import LocalDestination
from etcd_backupd.destinations import Destination
from etcd_backupd.destinations.local import LocalDirectory
from etcd_backupd.errors import DestinationError
from etcd_backupd.fsutil import STALE_PART_AGE, part_path
from etcd_backupd.manifest import snapshot_name
from etcd_backupd.spool import BATCH_BYTES, SpoolError, SpoolWriter, choose_spool_dir
from tests.harness.clock import FixedClock

MOMENT = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


def chunks(total: int, size: int) -> list[bytes]:
    """Distinct chunks, so a reordering or a lost one shows."""
    data = hashlib.shake_256(b"etcd").digest(total)
    return [data[at : at + size] for at in range(0, total, size)]


def test_the_file_holds_the_stream_and_the_trailer_and_the_sink_sees_it_in_order(
    tmp_path: Path,
) -> None:
    handed: list[bytes] = []
    path = tmp_path / "snapshot.db.part"
    writer = SpoolWriter(path, handed.append)
    parts = chunks(5 * BATCH_BYTES + 123, 4096)  # several batches and a partial last one
    for chunk in parts:
        writer.write(chunk)
    body = b"".join(parts)
    assert writer.data_digest() == hashlib.sha256(body).digest()
    trailer = hashlib.sha256(body).digest()
    writer.seal(trailer)
    assert path.read_bytes() == body + trailer
    assert handed == [*parts, trailer]


def test_an_empty_stream_still_has_a_digest(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "empty.part", lambda chunk: None)
    assert writer.data_digest() == hashlib.sha256(b"").digest()
    writer.close()
    assert (tmp_path / "empty.part").read_bytes() == b""


def test_a_spool_file_is_never_written_over(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.db.part"
    path.write_bytes(b"another run's")
    with pytest.raises(SpoolError, match="cannot write spool file"):
        SpoolWriter(path, lambda chunk: None)
    assert path.read_bytes() == b"another run's"


def test_a_sink_that_fails_stops_the_stream_on_the_receiving_thread(tmp_path: Path) -> None:
    received: list[int] = []

    def sink(chunk: bytes) -> None:
        received.append(len(chunk))
        if len(received) == 3:
            raise DestinationError("the uploads cannot follow")

    writer = SpoolWriter(tmp_path / "snapshot.db.part", sink)
    with pytest.raises(DestinationError, match="cannot follow"):
        for chunk in chunks(64 * BATCH_BYTES, 8192):
            writer.write(chunk)
        writer.data_digest()
    writer.close()
    assert len(received) == 3


def test_a_writer_closed_midway_leaves_no_thread_behind(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "snapshot.db.part", lambda chunk: None)
    writer.write(b"x" * (BATCH_BYTES + 1))
    writer.close()
    writer.close()
    assert not [t for t in threading.enumerate() if t.name == "spool-hasher" and t.is_alive()]


class NoDisk:
    """A destination whose directory cannot be made (the fault under test)."""

    name = "broken"

    def spool_dir(self) -> Path | None:
        raise DestinationError("destination 'broken': cannot create /mnt/gone: read-only")


class Remote:
    """A destination with no local disk to offer, as S3."""

    name = "remote"

    def spool_dir(self) -> Path | None:
        return None


def local(tmp_path: Path, name: str) -> LocalDirectory:
    return LocalDirectory(LocalDestination(type="local", name=name, path=tmp_path / name))


def test_the_stream_goes_into_the_first_local_destination_that_can_take_it(
    tmp_path: Path,
) -> None:
    first, second = local(tmp_path, "first"), local(tmp_path, "second")
    targets: list[Destination] = [Remote(), NoDisk(), first, second]  # type: ignore[list-item]
    spool, owner = choose_spool_dir(targets, tmp_path / "scratch")
    assert (spool, owner) == (first.path, first)
    assert not (tmp_path / "scratch").exists()


def test_without_local_disk_the_stream_goes_into_the_scratch_directory(tmp_path: Path) -> None:
    targets: list[Destination] = [Remote(), NoDisk()]  # type: ignore[list-item]
    scratch = tmp_path / "state" / "spool"
    spool, owner = choose_spool_dir(targets, scratch)
    assert (spool, owner) == (scratch, None)
    assert scratch.is_dir()


def test_the_scratch_directory_is_cleared_of_killed_runs_parts_by_the_clock_given(
    tmp_path: Path,
) -> None:
    scratch = tmp_path / "spool"
    scratch.mkdir()
    old = part_path(scratch / snapshot_name("prod", MOMENT - timedelta(hours=3)))
    live = part_path(scratch / snapshot_name("prod", MOMENT))
    foreign = scratch / "notes.txt.part"
    for path in (old, live, foreign):
        path.write_bytes(b"x")
    # on the clock of the run, `old` was last touched two hours ago, `live` just now
    stamp = (MOMENT - STALE_PART_AGE - timedelta(hours=1)).timestamp()
    os.utime(old, (stamp, stamp))
    os.utime(live, (MOMENT.timestamp(), MOMENT.timestamp()))
    os.utime(foreign, (stamp, stamp))
    choose_spool_dir([], scratch, FixedClock(MOMENT))
    assert sorted(p.name for p in scratch.iterdir()) == sorted([live.name, foreign.name])


def test_a_scratch_directory_that_cannot_be_made_says_to_set_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(DestinationError, match=r"cannot create spool directory .*; set state_dir"):
        choose_spool_dir([], blocker / "spool")
