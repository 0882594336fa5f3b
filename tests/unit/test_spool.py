"""The spool file: written as the stream arrives, hashed and handed on in order, sealed with
etcd's trailer; and where it goes (a local destination first, else a scratch directory)."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from etcd_backupd import writeback
from etcd_backupd.config_destinations import LocalDestination
from etcd_backupd.destinations import Destination
from etcd_backupd.destinations.local import LocalDirectory
from etcd_backupd.errors import DestinationError
from etcd_backupd.fsutil import STALE_PART_AGE, part_path
from etcd_backupd.manifest import snapshot_name
from etcd_backupd.spool import BATCH_BYTES, SpoolError, SpoolWriter, choose_spool_dir
from etcd_backupd.writeback import WriteBack
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
    writer = SpoolWriter(
        tmp_path / "snapshot.db.part", lambda chunk: None, write_back=WriteBackSeen()
    )
    writer.write(b"x" * (BATCH_BYTES + 1))
    writer.close()
    writer.close()
    threads = {"spool-hasher", "write-back"}
    assert not [t for t in threading.enumerate() if t.name in threads and t.is_alive()]


class WriteBackSeen:
    """Stands in for the kernel's write-back: records each range asked for, or fails."""

    def __init__(self, fails_with: int | None = None) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.fails_with = fails_with
        self.called = threading.Event()

    def start(self, fd: int, offset: int, length: int) -> None:
        self.ranges.append((offset, length))
        self.called.set()
        if self.fails_with is not None:
            raise OSError(self.fails_with, os.strerror(self.fails_with))

    def __call__(self, fd: int) -> WriteBack:
        return WriteBack(fd, self.start)


def test_a_kept_spool_file_is_written_back_while_the_stream_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writeback, "STEP", 2 * BATCH_BYTES)
    seen = WriteBackSeen()
    path = tmp_path / "snapshot.db.part"
    writer = SpoolWriter(path, lambda chunk: None, write_back=seen)
    parts = chunks(9 * BATCH_BYTES + 123, 4096)
    half = len(parts) // 2
    for chunk in parts[:half]:
        writer.write(chunk)
    # the first ranges are on their way to disk while the rest of the stream is still to come
    assert seen.called.wait(5)
    for chunk in parts[half:]:
        writer.write(chunk)
    writer.data_digest()
    writer.seal(b"t" * 32)
    assert path.read_bytes() == b"".join(parts) + b"t" * 32
    assert seen.ranges[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(seen.ranges))
    assert not [t for t in threading.enumerate() if t.name == "write-back" and t.is_alive()]


def test_a_failed_write_back_stops_the_stream_as_the_final_fsync_would_report_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writeback, "STEP", BATCH_BYTES)
    seen = WriteBackSeen(fails_with=errno.EIO)
    path = tmp_path / "snapshot.db.part"
    writer = SpoolWriter(path, lambda chunk: None, write_back=seen)
    block = b"x" * BATCH_BYTES
    with pytest.raises(SpoolError, match=rf"cannot write {path} to disk: Input/output error"):
        writer.write(block)
        writer.write(block)
        assert seen.called.wait(5)
        # raised by a write once the failure is known, at the latest when the stream is sealed
        for _ in range(64):
            writer.write(block)
        writer.data_digest()
        writer.seal(b"t" * 32)
    writer.close()
    assert issubclass(SpoolError, DestinationError)


def test_a_spool_file_not_kept_is_left_to_the_kernel(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "snapshot.db.part", lambda chunk: None)
    writer.write(b"x" * (BATCH_BYTES + 1))
    writer.close()
    assert not [t for t in threading.enumerate() if t.name == "write-back"]


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
