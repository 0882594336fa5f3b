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
        live: dict[bytes, None],
        max_revision: int,
        with_crc: bool,
    ) -> tuple[int, int, bytes] | None: ...


def _load() -> _Walker | None:
    try:
        return cast(_Walker, importlib.import_module(f"{__package__}._walker"))
    except ImportError:
        return None


WALKER = _load()


class LeftToPython(Exception):
    """The compiled walk met something unusual: the file is to be walked again by the
    pure-Python reader, from the start."""


def walk_revisions(
    reader: BoltReader,
    bucket: Bucket,
    checksum: int,
    live: dict[bytes, None],
    *,
    max_revision: int | None = None,
    with_crc: bool = True,
) -> tuple[int, int, bytes] | None:
    """Walk bucket `key` (up to `max_revision`), replaying its records into `live`: the
    checksum carried on, the entries and the last revision key. None when there is no compiled
    walk for it (not built, an inline bucket, a negative revision): the caller walks
    `reader.leaves` instead. Raises LeftToPython, after which `reader` and `live` are spent."""
    if WALKER is None or bucket.inline is not None:
        return None
    if max_revision is not None and max_revision < 0:
        return None
    walked = WALKER.walk_revisions(
        reader.fd,
        bucket.root,
        reader.page_size,
        reader.pgid,
        reader.page_map,
        checksum,
        live,
        -1 if max_revision is None else max_revision,
        with_crc,
    )
    if walked is None:
        raise LeftToPython
    return walked
