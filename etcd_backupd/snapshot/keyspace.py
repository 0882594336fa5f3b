"""The keys a snapshot holds, as a restored cluster would serve them: replaying bucket `key`
(every revision, in revision order) on the read-only bbolt reader. Pure: reads only the file.
The key "" a revision bump leaves is not served: etcd refuses it in every request."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from operator import methodcaller
from pathlib import Path

from ..errors import SnapshotInvalid
from . import compiled
from .bbolt import BoltReader, Bucket
from .status import BUMP_MARKER, KEY_BUCKET, REVISION_KEY_SIZE, TOMBSTONE, replay


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


def _records(path: Path) -> Iterator[tuple[int, bool, bytes]]:
    """(main revision, is tombstone, KeyValue bytes) for each record of bucket `key`."""
    with BoltReader(path) as reader:
        bucket = _key_bucket(reader)
        if bucket is None:
            return
        for key, record, _ in reader.items(bucket):
            if len(key) < REVISION_KEY_SIZE:
                raise SnapshotInvalid("a key in bucket 'key' is not an etcd revision")
            tombstone = len(key) > REVISION_KEY_SIZE and key[-1] == TOMBSTONE
            yield int.from_bytes(key[:8], "big"), tombstone, bytes(record)


def _key_bucket(reader: BoltReader) -> Bucket | None:
    return next((b for b in reader.buckets() if b.name == KEY_BUCKET), None)


_AUTH_BUCKET = b"auth"
_AUTH_ENABLED = b"authEnabled"


def auth_enabled(path: Path) -> bool:
    """Whether a cluster restored from the snapshot asks clients to authenticate: etcd keeps
    the switch as one byte, 1 for on, in bucket `auth`."""
    with BoltReader(path) as reader:
        for bucket in reader.buckets():
            if bucket.name == _AUTH_BUCKET:
                return any(
                    key == _AUTH_ENABLED and bytes(value) == b"\x01"
                    for key, value, _ in reader.items(bucket)
                )
    return False


def live_key_names(path: Path, *, prefix: bytes = b"", revision: int | None = None) -> list[bytes]:
    """The keys under `prefix` at `revision` (default: the newest), sorted: the names of what
    `live_keys` gives, found a page of records at a time instead of one record at a time."""
    try:
        with BoltReader(path) as reader:
            bucket = _key_bucket(reader)
            if bucket is None:
                return []
            names = compiled.live_names(reader, bucket, prefix, revision)
            if names is not None:
                return names
    except compiled.LeftToPython:
        pass
    live = _live_names(path, revision)
    live.pop(BUMP_MARKER, None)
    return sorted(filter(methodcaller("startswith", prefix), live) if prefix else live)


def _live_names(path: Path, revision: int | None) -> dict[bytes, None]:
    live: dict[bytes, None] = {}
    with BoltReader(path) as reader:
        bucket = _key_bucket(reader)
        if bucket is None:
            return live
        for leaf in reader.leaves(bucket):
            revisions = leaf.keys
            if not revisions:
                continue
            if revision is not None and _main(revisions[-1]) > revision:
                kept = sum(1 for r in revisions if _main(r) <= revision)
                if kept:
                    replay(leaf, kept, live)
                break
            replay(leaf, len(revisions), live)
            del leaf  # a page of large values is megabytes: not held while the next is read
    return live


def _main(revision_key: bytes) -> int:
    return int.from_bytes(revision_key[:8], "big")


def live_keys(path: Path, *, prefix: bytes = b"", revision: int | None = None) -> list[KeyValue]:
    """The keys under `prefix` at `revision` (default: the newest) with their values and
    metadata, sorted by key.

    Revisions older than the last compaction are gone from the snapshot, as from etcd: asking for
    one gives the state as far as the snapshot still knows it.
    """
    # imported here: python-etcd3's package pulls in gRPC, which reading keys alone never needs
    from etcd3.etcdrpc import kv_pb2
    from google.protobuf.message import DecodeError

    live: dict[bytes, KeyValue] = {}
    for main, tombstone, record in _records(path):
        if revision is not None and main > revision:
            break
        message = kv_pb2.KeyValue()
        try:
            message.ParseFromString(record)
        except DecodeError as exc:
            raise SnapshotInvalid(f"revision {main} holds a damaged KeyValue: {exc}") from exc
        if message.key == BUMP_MARKER or not message.key.startswith(prefix):
            continue
        if tombstone:
            live.pop(message.key, None)
            continue
        live[message.key] = KeyValue(
            key=message.key,
            value=message.value,
            create_revision=message.create_revision,
            mod_revision=message.mod_revision,
            version=message.version,
            lease=message.lease,
        )
    return [live[key] for key in sorted(live)]


@dataclass(frozen=True)
class Difference:
    added: list[KeyValue]
    removed: list[KeyValue]
    changed: list[tuple[KeyValue, KeyValue]]


def diff(old: Path, new: Path, *, prefix: bytes = b"") -> Difference:
    """Keys added, removed and changed (value or lease) between two snapshots."""
    before = {kv.key: kv for kv in live_keys(old, prefix=prefix)}
    after = {kv.key: kv for kv in live_keys(new, prefix=prefix)}
    return Difference(
        added=[after[k] for k in sorted(after.keys() - before.keys())],
        removed=[before[k] for k in sorted(before.keys() - after.keys())],
        changed=[
            (before[k], after[k])
            for k in sorted(before.keys() & after.keys())
            if (before[k].value, before[k].lease) != (after[k].value, after[k].lease)
        ],
    )
