"""The spool file a snapshot streams into. Each chunk is written on the receiving thread, while
it is still in the CPU cache (from another thread the same copy into the page cache measured four
times as costly); SHA-256 runs on a thread of its own, overlapping with receiving from etcd, and
hands each hashed chunk to the sink (the cycle's uploads learn there how far the file is
written). Also where that file goes: into a local destination when one can take it, so storing
the snapshot there costs a link."""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .clock import SYSTEM_CLOCK, Clock
from .errors import BackupError, DestinationError
from .fsutil import create_new, make_private_dir, remove_stale_parts
from .manifest import parse_snapshot_name

if TYPE_CHECKING:
    from .destinations import Destination

log = logging.getLogger(__name__)

# Chunks travel to the hashing thread in batches of about this size; the queue holds a few of
# them, which bounds the memory between receiving and hashing to BATCH_BYTES x QUEUE_BATCHES.
BATCH_BYTES = 256 * 1024
QUEUE_BATCHES = 4


class SpoolError(DestinationError):
    """The spool file cannot be written (full disk, read-only directory)."""


class SpoolWriter:
    def __init__(self, path: Path, sink: Callable[[bytes], None]) -> None:
        self.path = path
        self._sink = sink
        self._digest = hashlib.sha256()
        # the SHA-256 of the whole file, trailer included, once sealed
        self.file_sha256: str | None = None
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(QUEUE_BATCHES)
        self._crash: BaseException | None = None
        try:
            self._fd = create_new(path)
        except OSError as exc:
            raise self._failure(exc) from exc
        self._thread = threading.Thread(target=self._run, name="spool-hasher", daemon=True)
        self._thread.start()

    def _failure(self, exc: OSError) -> SpoolError:
        return SpoolError(f"cannot write spool file {self.path}: {exc.strerror}")

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._crash is not None:
                continue  # keep draining so the receiving side never blocks on a dead thread
            try:
                for chunk in batch:
                    self._digest.update(chunk)
                for chunk in batch:
                    self._sink(chunk)
            except BaseException as exc:  # re-raised on the receiving thread
                self._crash = exc

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise self._failure(exc) from exc

    def _check(self) -> None:
        if self._crash is not None:
            raise self._crash

    def write(self, chunk: bytes) -> None:
        self._write_all(chunk)
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= BATCH_BYTES:
            self._check()
            self._queue.put(self._batch)
            self._batch = []
            self._batch_bytes = 0

    def _drain(self) -> None:
        if self._batch:
            self._queue.put(self._batch)
            self._batch = []
        self._queue.put(None)
        self._thread.join()

    def data_digest(self) -> bytes:
        """Wait for every chunk to be hashed and handed on; the SHA-256 of all of them."""
        self._drain()
        self._check()
        return self._digest.digest()

    def seal(self, trailer: bytes) -> None:
        """Append etcd's SHA-256 trailer, hand it to the uploads, close. Not fsynced here: the
        cycle does that while verification reads the file, so the two overlap."""
        try:
            self._write_all(trailer)
            self._sink(trailer)
        finally:
            self.close()
        # every data chunk is hashed by now (data_digest drained the queue)
        whole = self._digest.copy()
        whole.update(trailer)
        self.file_sha256 = whole.hexdigest()

    def close(self) -> None:
        if self._thread.is_alive():
            self._drain()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def choose_spool_dir(
    destinations: Sequence[Destination], fallback: Path, clock: Clock = SYSTEM_CLOCK
) -> tuple[Path, Destination | None]:
    """Stream into the first destination that offers local disk, so storing there costs a link;
    else into a scratch directory. Says which destination the spool file will be kept in."""
    for destination in destinations:
        try:
            directory = destination.spool_dir()
        except BackupError as exc:
            # that destination fails on its own when the snapshot is stored; the others go on
            log.warning("cannot spool into destination %s: %s", destination.name, exc)
            continue
        if directory is not None:
            return directory, destination
    try:
        make_private_dir(fallback)
    except OSError as exc:
        raise DestinationError(
            f"cannot create spool directory {fallback}: {exc.strerror}; set state_dir"
        ) from exc
    for stale in remove_stale_parts(
        fallback, clock.now(), lambda final: parse_snapshot_name(final) is not None
    ):
        log.warning("removed %s, left by an interrupted run", fallback / stale)
    return fallback, None
