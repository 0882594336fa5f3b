"""The generic multipart layer against an in-memory store of its four primitives: parts of
exactly part_size numbered from 1, a bounded number in flight, a failed part failing the upload
and aborting it, a stall given up on."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from etcd_backupd.destinations.multipart import Bounds, MultipartUpload, Receipt
from etcd_backupd.errors import DestinationBusy, DestinationError
from tests.harness.clock import FixedClock, SteppedClock

CLOCK = FixedClock(datetime(2026, 12, 1, tzinfo=UTC))


class MemoryStore:
    def __init__(self, *, delay: float = 0.0, fail_part: int | None = None) -> None:
        self.parts: dict[int, bytes] = {}
        self.calls: list[str] = []
        self.completed: list[Receipt] | None = None
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = threading.Event()
        self._delay = delay
        self._fail_part = fail_part
        self._lock = threading.Lock()

    def start(self) -> None:
        self.calls.append("start")

    def upload_part(self, number: int, data: bytes) -> Receipt:
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(self._delay)
            if number == self._fail_part:
                raise DestinationError(f"part {number} refused")
            self.parts[number] = data
            return {"PartNumber": number}
        finally:
            with self._lock:
                self.in_flight -= 1

    def complete(self, receipts: list[Receipt]) -> None:
        self.calls.append("complete")
        self.completed = receipts

    def abort(self) -> None:
        self.calls.append("abort")


def bounds(**changes: float) -> Bounds:
    values = {
        "part_size": 10,
        "max_in_flight": 2,
        "max_parts": 100,
        "stall_timeout": 30.0,
        "deadline": 60.0,
        **changes,
    }
    return Bounds(**values)  # type: ignore[arg-type]


def test_parts_are_cut_to_exactly_part_size_and_numbered_in_order() -> None:
    store = MemoryStore(delay=0.01)
    upload = MultipartUpload(store, bounds(), CLOCK, "destination 'mem'")
    data = bytes(range(256)) * 3
    for at in range(0, len(data), 7):
        upload.write(data[at : at + 7])
    upload.complete()
    assert store.calls == ["start", "complete"]
    assert sorted(store.parts) == list(range(1, 78))
    assert all(len(store.parts[n]) == 10 for n in range(1, 77)) and len(store.parts[77]) == 8
    assert b"".join(store.parts[n] for n in sorted(store.parts)) == data
    assert store.completed == [{"PartNumber": n} for n in range(1, 78)]
    assert upload.size == len(data)
    assert 1 <= store.most_in_flight <= 2


def test_an_empty_stream_is_one_empty_part() -> None:
    store = MemoryStore()
    upload = MultipartUpload(store, bounds(), CLOCK, "destination 'mem'")
    upload.complete()
    assert store.parts == {1: b""}


def test_a_failed_part_fails_the_upload_and_aborts_it_once() -> None:
    store = MemoryStore(fail_part=2)
    upload = MultipartUpload(store, bounds(), CLOCK, "destination 'mem'")
    upload.write(b"x" * 20)
    with pytest.raises(DestinationError, match="part 2 refused"):
        upload.complete()
    upload.abort()
    assert store.calls == ["start", "abort"]


def test_a_failed_part_fails_the_next_write() -> None:
    store = MemoryStore(fail_part=1)
    upload = MultipartUpload(store, bounds(), CLOCK, "destination 'mem'")
    upload.write(b"x" * 10)
    time.sleep(0.2)
    with pytest.raises(DestinationError, match="part 1 refused"):
        upload.write(b"x" * 10)
    upload.abort()
    assert store.calls == ["start", "abort"]


def test_more_parts_than_the_store_takes_is_an_error() -> None:
    upload = MultipartUpload(MemoryStore(), bounds(max_parts=3), CLOCK, "destination 'mem'")
    with pytest.raises(DestinationError, match="more than 3 parts; raise part_size"):
        upload.write(b"x" * 40)


def test_a_store_that_refuses_to_complete_aborts_the_upload() -> None:
    class Taken(MemoryStore):
        def complete(self, receipts: list[Receipt]) -> None:
            raise DestinationBusy("stored by another run meanwhile")

    store = Taken()
    upload = MultipartUpload(store, bounds(), CLOCK, "destination 'mem'")
    upload.write(b"x" * 15)
    with pytest.raises(DestinationBusy):
        upload.complete()
    assert store.calls == ["start", "abort"]


def test_a_stalled_upload_is_given_up() -> None:
    class Hung(MemoryStore):
        def upload_part(self, number: int, data: bytes) -> Receipt:
            self.release.wait(10)
            return {"PartNumber": number}

    store = Hung()
    clock = SteppedClock(datetime(2026, 12, 1, tzinfo=UTC))
    upload = MultipartUpload(store, bounds(max_in_flight=1), clock, "destination 'mem'")
    upload.write(b"x" * 10)
    clock.advance(31)
    with pytest.raises(DestinationError, match="no part of the upload finished for 30 s"):
        upload.write(b"x" * 10)
    upload.abort()
    store.release.set()
    assert store.calls == ["start", "abort"]
