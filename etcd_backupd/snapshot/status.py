"""etcd's view of a snapshot file: its SHA-256 trailer, then the figures `etcdutl snapshot status`
prints (hash, revision, total keys, total size, and from 3.6 the storage version), computed from a
read-only bbolt walk.

Facts and algorithm: docs/snapshot-format.md, sections 1 and 3 to 5. etcd 3.6 (etcdutl/snapshot/
v3_snapshot.go, Status, at v3.6.0) keeps the bbolt format, the HASH and the REVISION, prints the
meta bucket's `storageVersion` as VERSION and counts as TOTAL KEYS the user keys alive at the
snapshot's revision, where 3.4 and 3.5 (the same file at v3.5.x) count the entries of every
bucket. 3.6's Snapshot RPC also names the storage version in each message (field 4 of
SnapshotResponse, api/etcdserverpb/rpc.proto); python-etcd3's stubs predate that field and drop
it, so the version is read from the file, where the server read it from.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import SnapshotInvalid
from ..formats import outer_layer
from . import compiled
from .bbolt import BUCKET_FLAG, MAGIC, BadMeta, BoltReader, Bucket, Leaf, parse_meta

SHA256_SIZE = 32
# etcd's snapshot API appends the digest to whole pages, and pages are multiples of 512 bytes
TRAILER_MODULUS = 512
_READ_BLOCK = 4 * 1024 * 1024
KEY_BUCKET = b"key"
_META_BUCKET = b"meta"
_CLUSTER_BUCKET = b"cluster"
_STORAGE_VERSION = b"storageVersion"
_CLUSTER_VERSION = b"clusterVersion"
# a revision key is main (8 bytes BE) "_" sub (8 bytes BE), plus "t" on a tombstone
REVISION_KEY_SIZE = 17
TOMBSTONE = ord("t")
_MAGIC_AT = 16
# protobuf tag of mvccpb.KeyValue.key: field 1, length-delimited
_KEY_TAG = 0x0A
# the key of the record a revision bump leaves; clients can neither write nor read key ""
BUMP_MARKER = b""
# go-semver's identifier (coreos/go-semver v0.3.1, semver.go), for a pre-release or metadata
_SEMVER_IDENTIFIER = re.compile(r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*")
_SEMVER_NUMBER = re.compile(r"[0-9]+")
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class DatabaseFigures:
    """What a walk of the bbolt database tells, whatever file holds it."""

    revision: int
    total_keys: int
    live_keys: int
    entries: int
    total_size: int
    hash: int
    page_size: int
    txid: int
    storage_version: str | None
    cluster_version: str | None


@dataclass(frozen=True)
class SnapshotStatus:
    """`total_keys` is TOTAL KEYS as the etcdutl of the snapshot's own line prints it: with a
    storage version (3.6 on), `live_keys`; without (3.4, 3.5), `entries`, every entry of every
    bucket, revisions and tombstones included."""

    revision: int
    total_keys: int
    live_keys: int
    entries: int
    total_size: int
    hash: int
    sha256: str
    file_size: int
    has_trailer: bool
    page_size: int
    txid: int
    storage_version: str | None
    cluster_version: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def has_trailer(size: int) -> bool:
    return size % TRAILER_MODULUS == SHA256_SIZE


def verify_snapshot(
    path: Path, *, expected_sha256: str | None = None, require_trailer: bool = True
) -> SnapshotStatus:
    """Prove a snapshot sound: its SHA-256 trailer, and the bbolt walk.

    `expected_sha256` (hex) is the digest the caller computed while the bytes streamed in: it is
    compared with the trailer instead of reading the file a second time to hash it. Without it,
    the file is hashed in a thread while the walk runs (hashlib and pread release the GIL). A
    trailer mismatch is reported before any damage the walk found, as the surer diagnosis.
    Without `require_trailer`, a file without a trailer is checked as a raw database by
    `verify_database`. Raises SnapshotInvalid.
    """
    size = _size(path)
    if not has_trailer(size):
        if require_trailer or size % TRAILER_MODULUS:
            raise SnapshotInvalid(_why_no_trailer(path, size))
        return verify_database(path, expected_sha256=expected_sha256)
    data_size = size - SHA256_SIZE
    walked: DatabaseFigures | SnapshotInvalid
    if expected_sha256 is not None:
        sha256 = _check_trailer(path, data_size, bytes.fromhex(expected_sha256))
        walked = walk_database(path)
    else:
        with ThreadPoolExecutor(max_workers=1) as pool:
            digest = pool.submit(_sha256_of, path, data_size)
            try:
                walked = walk_database(path)
            except SnapshotInvalid as exc:
                walked = exc
            sha256 = _check_trailer(path, data_size, digest.result())
    if isinstance(walked, SnapshotInvalid):
        raise walked
    if walked.total_size != data_size:
        raise SnapshotInvalid(
            f"the database holds {walked.total_size} bytes but the file holds {data_size} "
            "before its trailer: pages are missing or extra"
        )
    return SnapshotStatus(sha256=sha256, file_size=size, has_trailer=True, **asdict(walked))


def check_trailer(path: Path) -> str:
    """The SHA-256 of a snapshot's data, checked against its trailer, with no walk: for readers
    that walk only what they need. Raises SnapshotInvalid."""
    size = _size(path)
    if not has_trailer(size):
        raise SnapshotInvalid(_why_no_trailer(path, size))
    data_size = size - SHA256_SIZE
    return _check_trailer(path, data_size, _sha256_of(path, data_size))


def verify_database(path: Path, *, expected_sha256: str | None = None) -> SnapshotStatus:
    """Check a raw bbolt file without a trailer (a copy of member/snap/db): the walk, then the
    SHA-256 of the whole file, compared with `expected_sha256` when one is given."""
    size = _size(path)
    figures = walk_database(path)
    if size % figures.page_size:
        raise SnapshotInvalid(
            f"truncated: {size} bytes is not whole pages of {figures.page_size} bytes"
        )
    sha256 = _sha256_of(path, size).hex()
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        raise SnapshotInvalid(
            f"SHA-256 of the file is {sha256}, not the expected {expected_sha256}"
        )
    return SnapshotStatus(sha256=sha256, file_size=size, has_trailer=False, **asdict(figures))


def _check_trailer(path: Path, data_size: int, digest: bytes) -> str:
    """Check that the 32 bytes after the data are `digest`, the SHA-256 of the data."""
    with _reading(path) as fd:
        trailer = os.pread(fd, SHA256_SIZE, data_size)
    if trailer != digest:
        raise SnapshotInvalid(
            "SHA-256 of the data does not match the snapshot's trailer: the file is damaged"
        )
    return digest.hex()


def walk_database(path: Path) -> DatabaseFigures:
    """Run bbolt's structural check and compute etcd's figures in one walk."""
    try:
        with _bolt(path) as reader:
            return _figures(reader, fast=True)
    except compiled.LeftToPython:
        with _bolt(path) as reader:
            return _figures(reader, fast=False)


def read_storage_version(path: Path) -> str | None:
    """The storage version alone, read from bucket `meta` without walking the rest: what the
    tool that restores a snapshot must reach, known before a full walk has finished."""
    with _bolt(path) as reader:
        for bucket in reader.buckets():
            if bucket.name != _META_BUCKET:
                continue
            for leaf in reader.leaves(bucket):
                if _STORAGE_VERSION in leaf.keys:
                    return semantic_version(_value_of(leaf, _STORAGE_VERSION))
    return None


@contextmanager
def _bolt(path: Path) -> Iterator[BoltReader]:
    try:
        with BoltReader(path) as reader:
            yield reader
    except OSError as exc:
        raise SnapshotInvalid(f"cannot read {path}: {exc.strerror}") from exc
    except (IndexError, ValueError, OverflowError, struct.error) as exc:
        # the reader checks every bound it relies on; this net catches only a damage it did
        # not foresee, so that it still reads as a damaged file, not as a crash
        raise SnapshotInvalid(f"damaged database: {type(exc).__name__}: {exc}") from exc


def user_key(page: bytes, start: int, end: int) -> bytes:
    """The user key of the mvccpb.KeyValue at `page[start:end]`, read from the wire without
    decoding the rest.

    etcd always writes the key first, as field 1; anything else is not an etcd record, but for
    the empty record, the KeyValue of key "" that `snapshot restore --bump-revision` puts at the
    bumped revision (etcdutl/snapshot/v3_snapshot.go, unsafeBumpBucketsRevision, v3.6.0; the same
    from v3.5.10). It outlives compactions: every snapshot of a cluster so restored holds it.
    """
    if end == start:
        return BUMP_MARKER
    if end - start < 2 or page[start] != _KEY_TAG:
        raise SnapshotInvalid("bucket 'key' holds a record that is not an etcd KeyValue")
    length = 0
    shift = 0
    index = start + 1
    while True:
        if index >= end or shift > 63:
            raise SnapshotInvalid("bucket 'key' holds a record with a damaged key length")
        byte = page[index]
        index += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    if index + length > end:
        raise SnapshotInvalid("bucket 'key' holds a record cut short")
    return page[index : index + length]


def _figures(reader: BoltReader, *, fast: bool) -> DatabaseFigures:
    """`fast`: bucket `key` is walked by the compiled walker when there is one."""
    # imported here: the crc32c package reads its own installed metadata when imported, a tenth
    # of the start of `inspect`, which never computes etcd's hash
    import crc32c

    checksum = 0
    entries = 0
    revision = 0
    # the user keys alive, the key "" of a revision bump among them, and whether it is
    user_keys = 0
    bumped = False
    storage_version: str | None = None
    cluster_version: str | None = None
    for bucket in reader.buckets():
        checksum = crc32c.crc32c(bucket.name, checksum)
        if bucket.name == KEY_BUCKET:
            checksum, revisions, revision, user_keys, bumped = _key_bucket(
                reader, bucket, checksum, fast
            )
            entries += revisions
            continue
        for leaf in reader.leaves(bucket):
            entries += len(leaf.keys)
            checksum = _feed(leaf, checksum)
            if bucket.name == _META_BUCKET and _STORAGE_VERSION in leaf.keys:
                storage_version = semantic_version(_value_of(leaf, _STORAGE_VERSION))
            elif bucket.name == _CLUSTER_BUCKET and _CLUSTER_VERSION in leaf.keys:
                cluster_version = _value_of(leaf, _CLUSTER_VERSION).decode("utf-8", "replace")
    reader.check_unreached()
    return DatabaseFigures(
        revision=revision,
        total_keys=entries if storage_version is None else user_keys,
        live_keys=user_keys - bumped,
        entries=entries,
        total_size=reader.db_size,
        hash=checksum,
        page_size=reader.page_size,
        txid=reader.meta.txid,
        storage_version=storage_version,
        cluster_version=cluster_version,
    )


def _key_bucket(
    reader: BoltReader, bucket: Bucket, checksum: int, fast: bool
) -> tuple[int, int, int, int, bool]:
    """The checksum carried on, the entries, the revision of bucket `key`, and the number of user
    keys alive at its end, those etcdutl 3.6 counts, the key "" of a revision bump included, and
    whether that key is among them. The bucket holds nearly every entry: its loop does per page
    what it can, not per entry."""
    walked = compiled.count_revisions(reader, bucket, checksum) if fast else None
    if walked is not None:
        checksum, entries, last, alive, bumped = walked
        return checksum, entries, int.from_bytes(last[:8], "big"), alive + bumped, bumped
    live: dict[bytes, None] = {}
    entries = 0
    last = b""
    for leaf in reader.leaves(bucket):
        keys = leaf.keys
        if not keys:
            continue
        checksum = _feed(leaf, checksum)
        entries += len(keys)
        replay(leaf, len(keys), live)
        last = keys[-1]
        # not held while the walk reads the next page: a page of large values is megabytes
        del leaf
    revision = int.from_bytes(last[:8], "big")
    return checksum, entries, revision, len(live), BUMP_MARKER in live


def replay(leaf: Leaf, count: int, live: dict[bytes, None]) -> None:
    """Apply the first `count` entries of a leaf page of bucket `key` (revision keys, KeyValue
    records, in revision order) to `live`, the user keys whose newest revision is not a
    tombstone.

    One plain loop over the page: with the two or three records a page of Kubernetes objects
    holds, any per-page setup (map, dict.fromkeys) costs more than it saves.
    """
    page = leaf.page
    # the first `count` entries: the revision keys bound the zip
    entries = zip(leaf.keys[:count], leaf.value_starts, leaf.value_ends, strict=False)
    try:
        for revision, start, end in entries:
            put = len(revision) == REVISION_KEY_SIZE
            if not put and (len(revision) != REVISION_KEY_SIZE + 1 or revision[-1] != TOMBSTONE):
                raise SnapshotInvalid("bucket 'key' holds a key that is not an etcd revision")
            # nearly every key is shorter than 128 bytes: its length is one varint byte
            length = page[start + 1] if end - start >= 2 and page[start] == _KEY_TAG else 0x80
            if length < 0x80 and start + 2 + length <= end:
                name = page[start + 2 : start + 2 + length]
            else:
                name = user_key(page, start, end)
            if put:
                live[name] = None
            else:
                live.pop(name, None)
    except SnapshotInvalid as exc:
        raise SnapshotInvalid(
            f"{exc} near revision {int.from_bytes(leaf.keys[0][:8], 'big')}"
        ) from exc


def _feed(leaf: Leaf, checksum: int) -> int:
    """CRC-32C over the page's keys and values, as etcd's hash reads them."""
    import crc32c

    if leaf.packed is not None:
        return int(crc32c.crc32c(leaf.packed, checksum))
    for key, value, flags in zip(leaf.keys, leaf.values, leaf.flags, strict=True):
        checksum = crc32c.crc32c(key, checksum)
        # etcd reads a nested bucket's value as nil, so its header never reaches the hash
        if not flags & BUCKET_FLAG:
            checksum = crc32c.crc32c(value, checksum)
    return checksum


def _value_of(leaf: Leaf, key: bytes) -> bytes:
    return bytes(leaf.values[leaf.keys.index(key)])


def semantic_version(raw: bytes) -> str | None:
    """A storage version as etcdutl prints it, or None where it prints none.

    etcd parses the stored value with go-semver and prints it back (server/storage/schema/
    version.go, ReadStorageVersionFromSnapshot): three dot-separated decimal int64s, an optional
    `-pre-release` and `+metadata` of dot-separated [0-9A-Za-z-] identifiers, split off at the
    first `+` and then the first `-` (coreos/go-semver v0.3.1, Version.Set); numbers print
    without leading zeros (Version.String). A value that does not parse reads as no version.
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    text, _, metadata = text.partition("+")
    text, _, pre_release = text.partition("-")
    parts = text.split(".", 2)
    if len(parts) != 3 or not all(_SEMVER_NUMBER.fullmatch(part) for part in parts):
        return None
    numbers = [int(part) for part in parts]
    if any(number > _INT64_MAX for number in numbers):
        return None
    for identifier in (pre_release, metadata):
        if identifier and not _SEMVER_IDENTIFIER.fullmatch(identifier):
            return None
    version = ".".join(map(str, numbers))
    return (
        version + (f"-{pre_release}" if pre_release else "") + (f"+{metadata}" if metadata else "")
    )


def _why_no_trailer(path: Path, size: int) -> str:
    """The likeliest story of a file without a trailer, for the operator."""
    with _reading(path) as fd:
        head = os.pread(fd, TRAILER_MODULUS, 0)
    if int.from_bytes(head[_MAGIC_AT : _MAGIC_AT + 4], "little") != MAGIC:
        return f"not an etcd snapshot: {_kind_of(head)} ({size} bytes is not whole pages plus 32)"
    try:
        meta = parse_meta(head)
    except BadMeta:
        meta = None
    if meta is not None and size < meta.pgid * meta.page_size:
        return (
            f"truncated: file holds {size} bytes, database needs {meta.pgid * meta.page_size} "
            f"(pgid {meta.pgid} x {meta.page_size})"
        )
    if size % TRAILER_MODULUS == 0:
        return (
            "no SHA-256 trailer: not a snapshot saved from etcd's snapshot API "
            "(a raw member/snap/db copy?)"
        )
    return (
        f"truncated: {size} bytes is not whole pages plus 32, the SHA-256 trailer etcd's "
        "snapshot API appends"
    )


def _kind_of(head: bytes) -> str:
    if not head:
        return "the file is empty"
    if layer := outer_layer(head):
        return f"{layer.description}, {layer.undo} it first"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "no bbolt header"
    if all(c.isprintable() or c.isspace() for c in text):
        return "a text file"
    return "no bbolt header"


def _sha256_of(path: Path, length: int) -> bytes:
    digest = hashlib.sha256()
    view = memoryview(bytearray(_READ_BLOCK))
    with _reading(path) as fd:
        offset = 0
        while offset < length:
            count = os.preadv(fd, [view[: min(_READ_BLOCK, length - offset)]], offset)
            if count == 0:
                raise SnapshotInvalid(f"truncated: the file ended at {offset} of {length} bytes")
            digest.update(view[:count])
            offset += count
    return digest.digest()


@contextmanager
def _reading(path: Path) -> Iterator[int]:
    """A read-only descriptor; failing to open or read through it reads as SnapshotInvalid."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise SnapshotInvalid(f"cannot read {path}: {exc.strerror}") from exc
    try:
        yield fd
    except OSError as exc:
        raise SnapshotInvalid(f"cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise SnapshotInvalid(f"cannot read {path}: {exc.strerror}") from exc
