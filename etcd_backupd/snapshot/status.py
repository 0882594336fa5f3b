"""etcd's view of a snapshot file: its SHA-256 trailer, then the figures `etcdutl snapshot status`
prints (hash, revision, total keys, total size), computed from a read-only bbolt walk.

Facts and algorithm: ../shared/snapshot-format.md, sections 1 to 3 and 5.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import crc32c

from ..errors import SnapshotInvalid
from .bbolt import BUCKET_LEAF_FLAG, BoltReader

SHA256_SIZE = 32
# etcd's snapshot API appends the digest to whole pages; a page is a multiple of 512 bytes
TRAILER_MODULUS = 512
_HASH_BLOCK = 4 * 1024 * 1024
KEY_BUCKET = b"key"
TOMBSTONE = ord("t")
REVISION_KEY_SIZE = 17


@dataclass(frozen=True)
class SnapshotStatus:
    valid: bool
    revision: int
    total_keys: int
    live_keys: int
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


def _sha256_of_data(fd: int, length: int) -> bytes:
    digest = hashlib.sha256()
    offset = 0
    while offset < length:
        block = os.pread(fd, min(_HASH_BLOCK, length - offset), offset)
        if not block:
            raise SnapshotInvalid(f"truncated: the file ended at {offset} of {length} bytes")
        digest.update(block)
        offset += len(block)
    return digest.digest()


def check_trailer(path: Path, expected_sha256: str | None = None) -> tuple[str, int]:
    """Check the SHA-256 trailer; return the digest (hex) and the file size."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise SnapshotInvalid(f"cannot read {path}: {exc.strerror}") from exc
    try:
        size = os.fstat(fd).st_size
        if not has_trailer(size):
            raise SnapshotInvalid(
                f"no SHA-256 trailer ({size} bytes is not whole pages plus 32): truncated, or not "
                "saved from etcd's snapshot API (a raw member/snap/db copy?)"
            )
        trailer = os.pread(fd, SHA256_SIZE, size - SHA256_SIZE)
        if expected_sha256 is not None:
            computed = bytes.fromhex(expected_sha256)
        else:
            computed = _sha256_of_data(fd, size - SHA256_SIZE)
    finally:
        os.close(fd)
    if trailer != computed:
        raise SnapshotInvalid(
            "SHA-256 of the data does not match the snapshot's trailer: the file is damaged"
        )
    return computed.hex(), size


def user_key(value: memoryview) -> bytes:
    """Field 1 (key) of an mvccpb.KeyValue, read straight from the protobuf wire format."""
    if len(value) < 2 or value[0] != 0x0A:
        raise SnapshotInvalid("a record in bucket 'key' is not an etcd KeyValue")
    length = 0
    shift = 0
    index = 1
    while True:
        if index >= len(value) or shift > 63:
            raise SnapshotInvalid("a record in bucket 'key' has a damaged key length")
        byte = value[index]
        index += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    if index + length > len(value):
        raise SnapshotInvalid("a record in bucket 'key' is truncated")
    return bytes(value[index : index + length])


def walk_database(path: Path) -> dict[str, Any]:
    """Check the bbolt structure and compute etcd's figures; raises SnapshotInvalid."""
    with BoltReader(path) as reader:
        checksum = 0
        total_keys = 0
        revision = 0
        live: set[bytes] = set()
        storage_version: str | None = None
        cluster_version: str | None = None
        for name, value, flags in reader.items(reader.root_bucket()):
            if not flags & BUCKET_LEAF_FLAG:
                raise SnapshotInvalid(f"top-level entry {name!r} is not a bucket")
            checksum = crc32c.crc32c(name, checksum)
            is_key_bucket = name == KEY_BUCKET
            last_key: bytes | None = None
            for key, item, item_flags in reader.items(reader.bucket_of(name, value)):
                checksum = crc32c.crc32c(key, checksum)
                if not item_flags & BUCKET_LEAF_FLAG:
                    checksum = crc32c.crc32c(item, checksum)
                total_keys += 1
                if is_key_bucket:
                    last_key = key
                    if len(key) < REVISION_KEY_SIZE:
                        raise SnapshotInvalid("a key in bucket 'key' is not an etcd revision")
                    owner = user_key(item)
                    if len(key) > REVISION_KEY_SIZE and key[-1] == TOMBSTONE:
                        live.discard(owner)
                    else:
                        live.add(owner)
                elif name == b"meta" and key == b"storageVersion":
                    storage_version = bytes(item).decode(errors="replace")
                elif name == b"cluster" and key == b"clusterVersion":
                    cluster_version = bytes(item).decode(errors="replace")
            if is_key_bucket and last_key is not None:
                revision = int.from_bytes(last_key[:8], "big")
        return {
            "revision": revision,
            "total_keys": total_keys,
            "live_keys": len(live),
            "total_size": reader.db_size,
            "hash": checksum,
            "page_size": reader.page_size,
            "txid": reader.meta.txid,
            "storage_version": storage_version,
            "cluster_version": cluster_version,
        }


def verify_snapshot(
    path: Path, *, expected_sha256: str | None = None, require_trailer: bool = True
) -> SnapshotStatus:
    """Prove a snapshot sound: trailer first, then the bbolt walk. Raises SnapshotInvalid.

    `expected_sha256` is the digest the caller computed while the bytes streamed: it is compared
    with the trailer instead of hashing the file a second time. Without `require_trailer`, a raw
    database file (no trailer) is walked as it is.
    """
    if require_trailer or has_trailer(_size(path)):
        sha256, size = check_trailer(path, expected_sha256)
        trailer = True
    else:
        size = _size(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            sha256 = _sha256_of_data(fd, size).hex()
        finally:
            os.close(fd)
        trailer = False
    try:
        figures = walk_database(path)
    except (ValueError, IndexError, struct.error) as exc:
        # the reader checks bounds itself; this is the net under a damage it did not foresee
        raise SnapshotInvalid(f"damaged database: {exc}") from exc
    if trailer and figures["total_size"] != size - SHA256_SIZE:
        raise SnapshotInvalid(
            f"the database holds {figures['total_size']} bytes but the file holds "
            f"{size - SHA256_SIZE} before its trailer: pages are missing or extra"
        )
    return SnapshotStatus(valid=True, sha256=sha256, file_size=size, has_trailer=trailer, **figures)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise SnapshotInvalid(f"cannot read {path}: {exc.strerror}") from exc
