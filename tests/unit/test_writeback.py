"""Write-back of a growing file: started on a thread of its own as the file grows, each range
once and in order; a failure kept for the writer, a file system without the call left alone."""

from __future__ import annotations

import errno
import mmap
import os
import threading
from pathlib import Path

import pytest

from etcd_backupd import writeback
from etcd_backupd.writeback import WriteBack, start_writing

STEP = 2 * mmap.PAGESIZE


class Recorder:
    """Stands in for the kernel call: records each range asked for."""

    def __init__(self, fails_with: int | None = None) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.fails_with = fails_with
        self.called = threading.Event()

    def __call__(self, fd: int, offset: int, length: int) -> None:
        os.fstat(fd)  # the descriptor is still open
        self.ranges.append((offset, length))
        self.called.set()
        if self.fails_with is not None:
            raise OSError(self.fails_with, os.strerror(self.fails_with))


@pytest.fixture(autouse=True)
def small_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writeback, "STEP", STEP)


def test_each_step_of_growth_is_written_back_once_and_in_order(tmp_path: Path) -> None:
    start = Recorder()
    with open(tmp_path / "file", "wb") as out:
        write_back = WriteBack(out.fileno(), start)
        for size, asks in ((STEP - 1, False), (STEP, True), (STEP + 10, False), (3 * STEP, True)):
            write_back.grown(size)
            if asks:  # wait for it, so that no range is merged into the next
                assert start.called.wait(5)
                start.called.clear()
        write_back.grown(3 * STEP + 1)
        write_back.finish()
    assert start.ranges == [(0, STEP), (STEP, 2 * STEP)]


def test_only_whole_pages_are_written_back(tmp_path: Path) -> None:
    start = Recorder()
    with open(tmp_path / "file", "wb") as out:
        write_back = WriteBack(out.fileno(), start)
        write_back.grown(STEP + 100)
        assert start.called.wait(5)
        start.called.clear()
        write_back.grown(2 * STEP + 100)
        assert start.called.wait(5)
        write_back.finish()
    # the page being filled waits for the next range
    assert start.ranges == [(0, STEP), (STEP, STEP)]


def test_a_failure_is_raised_to_the_writer_while_it_writes_and_at_the_end(tmp_path: Path) -> None:
    start = Recorder(fails_with=errno.EIO)
    with open(tmp_path / "file", "wb") as out:
        write_back = WriteBack(out.fileno(), start)
        write_back.grown(STEP)
        assert start.called.wait(5)
        write_back.close()  # the thread has ended: its failure is recorded
        with pytest.raises(OSError) as raised:
            write_back.grown(2 * STEP)
        assert raised.value.errno == errno.EIO
        with pytest.raises(OSError, match="Input/output error"):
            write_back.finish()


def test_a_file_system_without_write_back_is_left_to_the_final_fsync(tmp_path: Path) -> None:
    start = Recorder(fails_with=errno.ENOSYS)
    with open(tmp_path / "file", "wb") as out:
        write_back = WriteBack(out.fileno(), start)
        write_back.grown(STEP)
        assert start.called.wait(5)
        write_back.grown(4 * STEP)
        write_back.finish()
    assert start.ranges == [(0, STEP)]  # not asked again


def test_its_own_descriptor_is_closed_and_its_thread_gone(tmp_path: Path) -> None:
    before = set(os.listdir("/proc/self/fd"))
    with open(tmp_path / "file", "wb") as out:
        write_back = WriteBack(out.fileno(), Recorder())
        write_back.close()
        write_back.close()
    assert set(os.listdir("/proc/self/fd")) <= before
    assert not [t for t in threading.enumerate() if t.name == "write-back" and t.is_alive()]


def test_the_kernel_call_starts_writing_a_real_file(tmp_path: Path) -> None:
    with open(tmp_path / "file", "wb") as out:
        out.write(b"x" * 3 * STEP)
        out.flush()
        start_writing(out.fileno(), 0, 3 * STEP)
        with pytest.raises(OSError) as raised:
            start_writing(out.fileno(), -1, STEP)
        assert raised.value.errno == errno.EINVAL
