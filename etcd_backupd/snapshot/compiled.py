"""The compiled walk of bucket `key` (_walker.c), when the package was built with a C compiler.

It does what the pure-Python walk of that bucket does (bbolt's checks of every page it reaches,
etcd's hash, the replay of the records) without Python work per page and per record; the bucket
holds nearly every page of a database. It names no damage: on anything unusual it stops, and the
caller walks the file again with the pure-Python reader, which names the damage or reads the
unusual but sound file. Without the extension the pure-Python walk does everything, slower.
"""

from __future__ import annotations

import importlib
from typing import Protocol, cast

from .bbolt import BoltReader, Bucket


class _Walker(Protocol):
    def walk_revisions(
        self,
        fd: int,
        root: int,
        page_size: int,
        pgid: int,
        seen: bytearray,
        checksum: int,
    ) -> tuple[int, int, bytes, int, bool] | None: ...

    def live_names(
        self,
        fd: int,
        root: int,
        page_size: int,
        pgid: int,
        seen: bytearray,
        prefix: bytes,
        max_revision: int,
    ) -> list[bytes] | None: ...


def _load() -> _Walker | None:
    try:
        return cast(_Walker, importlib.import_module(f"{__package__}._walker"))
    except ImportError:
        return None


WALKER = _load()


class LeftToPython(Exception):
    """The compiled walk met something unusual: the file is to be walked again by the
    pure-Python reader, from the start."""


def count_revisions(
    reader: BoltReader, bucket: Bucket, checksum: int
) -> tuple[int, int, bytes, int, bool] | None:
    """Walk bucket `key` to its end: the checksum carried on, the entries, the last revision
    key, the number of user keys alive (the key "" of a revision bump left out) and whether
    that key is. The keys themselves are not kept, only an 8-byte fingerprint of each while the
    walk runs. None when there is no compiled walk for the bucket (not built, inline): the caller
    walks `reader.leaves` instead. Raises LeftToPython, after which `reader` is spent."""
    if WALKER is None or bucket.inline is not None:
        return None
    walked = WALKER.walk_revisions(
        reader.fd, bucket.root, reader.page_size, reader.pgid, reader.page_map, checksum
    )
    if walked is None:
        raise LeftToPython
    return walked


def live_names(
    reader: BoltReader, bucket: Bucket, prefix: bytes, max_revision: int | None
) -> list[bytes] | None:
    """Replay bucket `key` up to `max_revision` (default: its end): the user keys alive under
    `prefix`, the key "" of a revision bump left out, sorted. None when there is no compiled walk
    for it (not built, inline, a negative revision): the caller walks `reader.leaves` instead.
    Raises LeftToPython, after which `reader` is spent."""
    if WALKER is None or bucket.inline is not None:
        return None
    if max_revision is not None and max_revision < 0:
        return None
    limit = -1 if max_revision is None else max_revision
    names = WALKER.live_names(
        reader.fd, bucket.root, reader.page_size, reader.pgid, reader.page_map, prefix, limit
    )
    if names is None:
        raise LeftToPython
    return names
