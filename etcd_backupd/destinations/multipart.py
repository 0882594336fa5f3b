"""A multipart upload of a stream, whatever the store: buffering into parts of one size, part
numbering, a bounded number of parts in flight (each on a thread of its own), the stall and
deadline bounds, and abort. A store takes part in it through four primitives (PartStore): start an
upload, upload one part, complete the upload from the parts' receipts, abort it. S3 is one such
store (s3_upload.py); a GCS or Azure Blob destination would add only its four primitives."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

from ..clock import Clock
from ..errors import BackupError, DestinationError

# how often a wait for a part looks at the clock (stall_timeout, deadline) and at abort
_POLL_SECONDS = 0.2

Receipt = dict[str, Any]


class PartStore(Protocol):
    """The primitives of one store's multipart upload. Each raises a BackupError (a
    DestinationError, or DestinationBusy when completing would replace another run's object)
    naming the destination; `upload_part` runs on a thread of its own, several at once."""

    def start(self) -> None: ...

    def upload_part(self, number: int, data: bytes) -> Receipt: ...

    def complete(self, receipts: list[Receipt]) -> None: ...

    def abort(self) -> None:
        """Discard the upload and its parts; never raises (a store that cannot is logged)."""


@dataclass(frozen=True)
class Bounds:
    part_size: int
    max_in_flight: int
    max_parts: int
    # give the upload up when no part finishes for this long, or it outlasts the deadline
    stall_timeout: float
    deadline: float


class MultipartUpload:
    """Bytes written are cut into parts of exactly part_size (the last may be shorter), which go
    up in parallel, at most max_in_flight at once: memory stays about part_size x
    (max_in_flight + 1). A part that fails fails the next write, or `complete`."""

    def __init__(self, store: PartStore, bounds: Bounds, clock: Clock, where: str) -> None:
        self._store = store
        self._bounds = bounds
        self._clock = clock
        # "destination 'name' (location)", for messages
        self._where = where
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._parts: list[Future[Receipt]] = []
        self._slots = threading.BoundedSemaphore(bounds.max_in_flight)
        # parts in flight, and when one last finished (or the first of a new batch was sent)
        self._in_flight = 0
        self._progress = clock.monotonic()
        self._deadline = self._progress + bounds.deadline
        self._lock = threading.Lock()
        self._abandoned = False
        self._open = False
        self.size = 0
        store.start()
        self._open = True

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        size = self._bounds.part_size
        if self._pending_size >= size:
            # parts of exactly part_size, whatever the size of the blocks handed in
            joined = b"".join(self._pending)
            whole = len(joined) - len(joined) % size
            for start in range(0, whole, size):
                self._send(joined[start : start + size])
            self._pending = [joined[whole:]] if whole < len(joined) else []
            self._pending_size = len(joined) - whole

    def complete(self) -> None:
        """Send the rest, wait for every part, complete the upload; on any failure abort it
        and raise why."""
        try:
            if self._pending or not self._parts:
                data = b"".join(self._pending)
                self._pending, self._pending_size = [], 0
                self._send(data)
            receipts = [self._wait(future) for future in self._parts]
            self._store.complete(receipts)
        except BackupError:
            self.abort()
            raise
        self._open = False

    def abort(self) -> None:
        """Give the upload up. Parts still in flight are not waited for: their requests end
        with the store's own timeouts, and the store's abort discards what they upload."""
        self._abandoned = True
        if self._open:
            self._open = False
            self._store.abort()

    def _send(self, data: bytes) -> None:
        number = len(self._parts) + 1
        if number > self._bounds.max_parts:
            raise DestinationError(
                f"{self._where}: the snapshot needs more than {self._bounds.max_parts} parts; "
                "raise part_size"
            )
        self._raise_failed_part()
        while not self._slots.acquire(timeout=_POLL_SECONDS):
            self._check_time()
        self.size += len(data)
        future: Future[Receipt] = Future()
        with self._lock:
            if not self._in_flight:
                self._progress = self._clock.monotonic()
            self._in_flight += 1
        self._parts.append(future)
        # daemon threads: a request that hangs neither holds up an upload given up nor the
        # process's exit
        threading.Thread(
            target=self._upload_part,
            args=(number, data, future),
            name=f"upload-part{number}",
            daemon=True,
        ).start()

    def _upload_part(self, number: int, data: bytes, future: Future[Receipt]) -> None:
        try:
            if self._abandoned:
                raise DestinationError(f"{self._where}: the upload was aborted")
            receipt = self._store.upload_part(number, data)
            with self._lock:
                self._progress = self._clock.monotonic()
            future.set_result(receipt)
        except BaseException as exc:  # handed to the waiting side
            future.set_exception(exc)
        finally:
            with self._lock:
                self._in_flight -= 1
            self._slots.release()

    def _check_time(self) -> None:
        """Give the upload up when it stalls or runs out of time, or was aborted meanwhile."""
        if self._abandoned:
            raise DestinationError(f"{self._where}: the upload was aborted")
        now = self._clock.monotonic()
        bounds = self._bounds
        if now - self._progress > bounds.stall_timeout:
            raise DestinationError(
                f"{self._where}: no part of the upload finished for {bounds.stall_timeout:g} s; "
                "giving this destination up for this cycle (raise stall_timeout if the store "
                "is just slow)"
            )
        if now > self._deadline:
            raise DestinationError(
                f"{self._where}: the upload took longer than deadline = {bounds.deadline:g} s; "
                "giving this destination up for this cycle"
            )

    def _raise_failed_part(self) -> None:
        for part in self._parts:
            if part.done() and (exc := part.exception()) is not None:
                raise exc

    def _wait(self, part: Future[Receipt]) -> Receipt:
        while True:
            try:
                return part.result(timeout=_POLL_SECONDS)
            except FutureTimeout:
                self._check_time()
