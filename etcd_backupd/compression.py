"""Compression of stored snapshots as push stages, the stages that write each stored format, and
reading a stored snapshot back to the file etcd wrote, whatever layers (formats) it is stored in."""

from __future__ import annotations

import errno
import os
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .encryption import Identity, Recipient, decrypting, encrypting
from .errors import BackupError, SnapshotInvalid
from .formats import (
    AGE,
    GZIP,
    MAGIC_SPAN,
    ZSTD,
    Compression,
    Layer,
    StoredFormat,
    outer_layer,
)
from .snapshot.bbolt import MAX_PAGE_SIZE, META_END, MIN_PAGE_SIZE, BadMeta, parse_meta
from .snapshot.status import SHA256_SIZE
from .stages import Pipeline, Sink, Stage, StageFactory

if TYPE_CHECKING:
    import zstandard

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


class _Compress:
    def __init__(self, kind: Compression, downstream: Sink) -> None:
        self._packer = compressor(kind)
        self._downstream = downstream

    def write(self, data: bytes) -> None:
        if packed := self._packer.compress(data):
            self._downstream.write(packed)

    def close(self) -> None:
        self._downstream.write(self._packer.flush())

    def abort(self) -> None:
        pass


def writing(stored: StoredFormat, recipients: Sequence[Recipient] = ()) -> list[StageFactory]:
    """The stages that turn a snapshot into `stored`, in the order the format's layers say."""
    kind = stored.compression
    return [
        encrypting(recipients) if layer is AGE else lambda down: _Compress(kind, down)
        for layer in stored.layers
    ]


def reading(identities: Sequence[Identity], label: str) -> StageFactory:
    """The stage that turns a stored stream, in whatever format its first bytes say, back into
    the snapshot; `label` names the stream in errors."""
    return lambda downstream: _Unpack(downstream, label, identities, (AGE, ZSTD, GZIP))


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


class _Decompress:
    def __init__(self, layer: Layer, downstream: Sink, label: str) -> None:
        import zstandard

        self._layer = layer
        self._downstream = downstream
        self._label = label
        self._unpacker: zstandard.ZstdDecompressionObj | zlib._Decompress = (
            zstandard.ZstdDecompressor().decompressobj()
            if layer is ZSTD
            else zlib.decompressobj(31)
        )

    def write(self, data: bytes) -> None:
        import zstandard

        view = memoryview(data)
        try:
            for at in range(0, len(view), _FEED):
                if out := self._unpacker.decompress(view[at : at + _FEED]):
                    self._downstream.write(out)
        except (zstandard.ZstdError, zlib.error) as exc:
            raise SnapshotInvalid(
                f"{self._label}: damaged {self._layer.name} stream: {exc}"
            ) from exc

    def close(self) -> None:
        if not self._unpacker.eof:
            raise SnapshotInvalid(f"{self._label}: {self._layer.name} stream is truncated")

    def abort(self) -> None:
        pass


class _Unpack:
    """Undoes the layer the stream's first bytes name, if any is `among` them, then (after age)
    the compression inside: the same file may be named anything, so its bytes decide."""

    def __init__(
        self,
        downstream: Sink,
        label: str,
        identities: Sequence[Identity],
        among: tuple[Layer, ...],
    ) -> None:
        self._downstream = downstream
        self._label = label
        self._identities = identities
        self._among = among
        self._head = b""
        self._stages: list[Stage] | None = None
        self._into: Sink = downstream

    def write(self, data: bytes) -> None:
        if self._stages is None:
            self._head += data
            if len(self._head) < MAGIC_SPAN:
                return
            data, self._head = self._head, b""
            self._choose(data)
        self._into.write(data)

    def close(self) -> None:
        if self._stages is None:
            self._choose(self._head)
            self._into.write(self._head)
        for stage in self._stages or ():
            stage.close()

    def abort(self) -> None:
        for stage in self._stages or ():
            stage.abort()

    def _choose(self, head: bytes) -> None:
        layer = outer_layer(head, self._among)
        if layer is AGE:
            inner = _Unpack(self._downstream, self._label, (), (ZSTD, GZIP))
            self._stages = [decrypting(self._identities, self._label)(inner), inner]
        elif layer is not None:
            self._stages = [_Decompress(layer, self._downstream, self._label)]
        else:
            self._stages = []
        self._into = self._stages[0] if self._stages else self._downstream


def decompress_file(
    source: Path,
    target: Path,
    *,
    size: int | None = None,
    identities: Sequence[Identity] = (),
) -> None:
    """Write the snapshot a stored file holds (compressed, encrypted or both) to a new file
    `target`, at most `size` bytes when its manifest states them. A damaged or oversized stream
    is SnapshotInvalid; an age file none of `identities` opens is IdentityError; a target that
    cannot take it (a full disk) is a BackupError."""
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise _cannot_write(source, target, exc) from exc
    try:
        _check_room(source, target, size)
        pipeline = Pipeline(
            [reading(identities, str(source))], _BoundedOutput(fd, source, size), hashed=False
        )
        try:
            with source.open("rb") as src:
                while block := src.read(_BLOCK):
                    pipeline.write(block)
            pipeline.close()
        except BaseException:
            pipeline.abort()
            raise
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
def plain_snapshot(
    path: Path, *, size: int | None = None, identities: Sequence[Identity] = ()
) -> Iterator[Path]:
    """The snapshot as etcd wrote it: the file itself, or a scratch copy of at most `size`
    bytes (the manifest's) when known, decompressed and decrypted (with `identities`)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(MAGIC_SPAN)
    except OSError as exc:
        raise SnapshotInvalid(f"cannot read {path}: {exc.strerror}") from exc
    if outer_layer(head) is None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="etcd-backupd-") as scratch:
        plain = Path(scratch) / "snapshot.db"
        decompress_file(path, plain, size=size, identities=identities)
        yield plain
