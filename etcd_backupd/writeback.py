"""Write-back of a file while it is still being written: each time it has grown by STEP bytes, a
thread of its own asks the kernel to start writing what it holds so far to disk, so the fsync that
makes the file durable at the end finds only the tail left to write.

sync_file_range(SYNC_FILE_RANGE_WRITE) rather than fdatasync: it starts the writing of the data
pages and returns, with no journal commit and no flush of the disk's cache each time; those are
the final fsync's, once. A dozen fdatasyncs per backup, on the disk etcd's WAL may share, would
be a dozen journal commits etcd's own fsyncs queue behind, and in a measurement they slowed the
stream writing beside them. On a thread of its own because the call waits while the disk's queue
is full (up to 140 ms measured), and the stream must never wait for the disk.

Durability stays with the fsync of the whole file and of its directory: this only moves the
disk's work earlier. A failure the kernel reports to the call (EIO, ENOSPC) is kept and raised
to the writer; one it meets later is reported by that final fsync.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
from collections.abc import Callable

# Enough to keep the tail the final fsync writes short, few enough calls to cost nothing.
STEP = 32 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2
# Where the call does not exist or this file cannot take it, there is nothing to start: the
# final fsync writes everything, as without write-back.
_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.ESPIPE, errno.EOPNOTSUPP})


def _sync_file_range() -> Callable[..., int] | None:
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_SYNC_FILE_RANGE = _sync_file_range()


def start_writing(fd: int, offset: int, length: int) -> None:
    """Start writing `length` bytes of the file from `offset` to disk, without waiting."""
    if _SYNC_FILE_RANGE is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    if _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class WriteBack:
    """Write-back of the file open as `fd` while one writer appends to it."""

    def __init__(self, fd: int, start: Callable[[int, int, int], None] = start_writing) -> None:
        self._start = start
        # its own descriptor: whoever closes the writer's never pulls it from under the thread
        self._fd = os.dup(fd)
        self._wanted = 0  # the size the file had when write-back was last asked for
        self._stopping = False
        self._failure: OSError | None = None
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="write-back", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        done = 0
        while True:
            with self._wake:
                while self._wanted == done and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                wanted = self._wanted
            try:
                self._start(self._fd, done, wanted - done)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    self._failure = exc
                return
            done = wanted

    def grown(self, size: int) -> None:
        """The file holds `size` bytes: past STEP more than last time, start writing them.
        Raise the failure of a write-back, if one failed."""
        if self._failure is not None:
            raise self._failure
        if size - self._wanted >= STEP:
            with self._wake:
                # whole pages only: the one the writer is still filling is never under write-back,
                # where a disk that needs stable pages would hold up the next write until written
                self._wanted = size - size % mmap.PAGESIZE
                self._wake.notify()

    def finish(self) -> None:
        """End the write-back; raise its failure, if it met one."""
        self.close()
        if self._failure is not None:
            raise self._failure

    def close(self) -> None:
        """End the write-back, whatever it met: the file is being given up."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
