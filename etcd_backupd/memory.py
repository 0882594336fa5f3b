"""The process's memory: how glibc's malloc is set up, and handing back what a cycle freed.

A cycle allocates and frees tens of MiB (boto3 clients and their requests, multipart upload
parts, gRPC messages, listings). Python frees the objects, but glibc keeps freed memory in its
heaps, so without these a daemon that backed up once stays near its high-water mark until the
next cycle.
"""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks at least this large get pages of their own, returned to the system when freed: the
# multipart upload parts (part_size >= 5 MiB), while the 1 MiB stream blocks stay in the heap
# and are reused. A fixed threshold also stops glibc from raising it to the largest block freed
# so far, after which every part would be carved out of the heap and leave it fragmented.
_MMAP_THRESHOLD = 2 * 1024 * 1024


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


_LIBC = _libc()


def configure_malloc() -> None:
    """Two malloc arenas (glibc gives each of gRPC's threads one of its own; two keep peak RSS
    down with no measurable cost to the stream) and the fixed mmap threshold above. Elsewhere
    than glibc, nothing."""
    try:
        if _LIBC is not None:
            _LIBC.mallopt(_M_ARENA_MAX, 2)
            _LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    except AttributeError:
        pass


def return_free_heap() -> None:
    """Return the heaps' free pages to the system, without a collection: under a millisecond.
    Between a cycle's stream and its verify, the buffers the stream freed go back before the
    walk builds its table of fingerprints, so the two are not counted together in the peak RSS
    (glibc only; elsewhere nothing)."""
    try:
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
    except AttributeError:
        log.debug("no malloc_trim in this C library")


def release_freed_memory() -> None:
    """After a cycle: collect the reference cycles it left (a boto3 client is one), then return
    the heaps' free pages to the system (glibc only; elsewhere the collection alone)."""
    gc.collect()
    return_free_heap()
