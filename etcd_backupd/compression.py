"""Streaming compression for stored snapshots, and reading them back for verification."""

from __future__ import annotations

import errno
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from .errors import BackupError, SnapshotInvalid
from .snapshot.bbolt import MAX_PAGE_SIZE, META_END, MIN_PAGE_SIZE, BadMeta, parse_meta
from .snapshot.status import SHA256_SIZE

if TYPE_CHECKING:
    import zstandard

    from .config_destinations import Compression

SUFFIXES: dict[str, str] = {"none": "", "zstd": ".zst", "gzip": ".gz"}
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"
# zstd level 3 keeps up with a local etcd stream on one core; higher levels do not.
ZSTD_LEVEL = 3
GZIP_LEVEL = 6
_BLOCK = 1024 * 1024


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _Zstd:
    def __init__(self) -> None:
        # imported here: most installations never compress, and the module costs memory
        import zstandard

        self._inner = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._inner.compress(data)

    def flush(self) -> bytes:
        return self._inner.flush()


class _Gzip:
    def __init__(self) -> None:
        self._inner = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        return self._inner.compress(data)

    def flush(self) -> bytes:
        return self._inner.flush()


def compressor(kind: Compression) -> Compressor:
    if kind == "zstd":
        return _Zstd()
    if kind == "gzip":
        return _Gzip()
    return _Identity()


def detect(path: Path) -> Compression:
    with path.open("rb") as handle:
        head = handle.read(4)
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    return "none"


def compress_file(source: Path, target: BinaryIO, kind: Compression) -> None:
    packer = compressor(kind)
    with source.open("rb") as src:
        while block := src.read(_BLOCK):
            target.write(packer.compress(block))
    target.write(packer.flush())


# etcd's own ceiling for --quota-backend-bytes is 8 GiB; no snapshot it takes is near this, so a
# stream that grows past it (with no manifest to say its size) is a decompression bomb
MAX_PLAIN_SIZE = 64 * 1024**3
# deflate and zstd expand one input byte into at most ~1 KiB and ~32 KiB: feeding this much at a
# time bounds what one call can produce, whatever the stream holds
_FEED = 1024
# both meta pages lie within this many bytes, whatever the page size
_METAS_WITHIN = MAX_PAGE_SIZE + META_END


class _BoundedOutput:
    """The decompressed stream's file: it refuses to grow past what the snapshot can be, which
    is the manifest's size when known, and otherwise what the bbolt meta pages at its start
    claim, or MAX_PLAIN_SIZE before they are read."""

    def __init__(self, fd: int, source: Path, size: int | None) -> None:
        self._fd = fd
        self._source = source
        self._why = "its manifest states" if size is not None else "is the most we take"
        self._limit = MAX_PLAIN_SIZE if size is None else size
        self._metas_read = False
        self.written = 0

    def write(self, data: bytes) -> None:
        if self.written + len(data) > self._limit:
            raise SnapshotInvalid(
                f"{self._source}: decompresses to more than the {self._limit} bytes {self._why}"
            )
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.written += len(data)
        if not self._metas_read and self.written >= _METAS_WITHIN:
            self._metas_read = True
            claimed = self._claimed_size()
            if claimed < self._limit:
                self._limit, self._why = claimed, "its bbolt meta page claims"

    def _claimed_size(self) -> int:
        """The largest database, with its trailer, that a valid meta page claims."""
        sizes = []
        offset = 0
        while offset <= MAX_PAGE_SIZE:
            try:
                meta = parse_meta(os.pread(self._fd, META_END, offset))
            except BadMeta:
                pass
            else:
                if offset in (0, meta.page_size):
                    sizes.append(meta.pgid * meta.page_size + SHA256_SIZE)
            offset = offset * 2 or MIN_PAGE_SIZE
        if not sizes:
            raise SnapshotInvalid(
                f"{self._source}: not an etcd snapshot: no valid bbolt meta page in the first "
                f"{self.written} bytes it decompresses to"
            )
        return max(sizes)


def decompress_file(source: Path, target: Path, *, size: int | None = None) -> None:
    """Write the snapshot a compressed file holds to a new file `target`, at most `size` bytes
    when its manifest states them. A damaged or oversized stream is SnapshotInvalid; a target
    that cannot take it (a full disk) is a BackupError."""
    import zstandard

    kind = detect(source)
    unpacker: zstandard.ZstdDecompressionObj | zlib._Decompress = (
        zstandard.ZstdDecompressor().decompressobj() if kind == "zstd" else zlib.decompressobj(31)
    )
    feed = _FEED if kind != "none" else _BLOCK
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise _cannot_write(source, target, exc) from exc
    try:
        _check_room(source, target, size)
        out = _BoundedOutput(fd, source, size)
        with source.open("rb") as src:
            while block := src.read(_BLOCK):
                if kind == "none":
                    out.write(block)
                    continue
                view = memoryview(block)
                for at in range(0, len(view), feed):
                    out.write(unpacker.decompress(view[at : at + feed]))
        if kind != "none" and not unpacker.eof:
            raise SnapshotInvalid(f"{source}: {kind} stream is truncated")
    except (zstandard.ZstdError, zlib.error) as exc:
        raise SnapshotInvalid(f"{source}: damaged {kind} stream: {exc}") from exc
    except OSError as exc:
        raise _cannot_write(source, target, exc) from exc
    finally:
        os.close(fd)


def _check_room(source: Path, target: Path, size: int | None) -> None:
    """Refuse before writing when the manifest's size cannot fit where the copy goes."""
    if size is None:
        return
    stats = os.statvfs(target.parent)
    free = stats.f_bavail * stats.f_frsize
    if size > free:
        raise BackupError(
            f"cannot decompress {source}: it holds {size} bytes and {target.parent} has "
            f"{free} free; point TMPDIR at a larger file system"
        )


def _cannot_write(source: Path, target: Path, exc: OSError) -> BackupError:
    return BackupError(
        f"cannot decompress {source} into {target.parent}: {exc.strerror}; point TMPDIR at a "
        "larger file system"
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
        else f"cannot decompress {source} into {target.parent}: {exc.strerror}"
    )


@contextmanager
def plain_snapshot(path: Path, *, size: int | None = None) -> Iterator[Path]:
    """The snapshot as etcd wrote it: the file itself, or a decompressed scratch copy of at
    most `size` bytes (the manifest's) when known."""
    try:
        kind = detect(path)
    except OSError as exc:
        raise SnapshotInvalid(f"cannot read {path}: {exc.strerror}") from exc
    if kind == "none":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="etcd-backupd-") as scratch:
        plain = Path(scratch) / "snapshot.db"
        decompress_file(path, plain, size=size)
        yield plain
