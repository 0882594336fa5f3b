"""The keys a snapshot holds, as a restored cluster would serve them: replaying bucket `key`
(every revision, in revision order) on the read-only bbolt reader. Pure: reads only the file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from etcd3.etcdrpc import kv_pb2
from google.protobuf.message import DecodeError

from ..errors import SnapshotInvalid
from .bbolt import BoltReader
from .status import KEY_BUCKET, REVISION_KEY_SIZE, TOMBSTONE, user_key


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
        for name, value, _ in reader.items(reader.root_bucket()):
            if name != KEY_BUCKET:
                continue
            for key, record, _ in reader.items(reader.bucket_of(name, value)):
                if len(key) < REVISION_KEY_SIZE:
                    raise SnapshotInvalid("a key in bucket 'key' is not an etcd revision")
                tombstone = len(key) > REVISION_KEY_SIZE and key[-1] == TOMBSTONE
                yield int.from_bytes(key[:8], "big"), tombstone, bytes(record)
            return


def live_keys(
    path: Path, *, prefix: bytes = b"", revision: int | None = None, keys_only: bool = False
) -> list[KeyValue]:
    """The keys under `prefix` at `revision` (default: the newest), sorted by key.

    Revisions older than the last compaction are gone from the snapshot, as from etcd: asking for
    one gives the state as far as the snapshot still knows it. With `keys_only` the records are
    not decoded beyond their key, and the other fields are left empty.
    """
    live: dict[bytes, KeyValue] = {}
    for main, tombstone, record in _records(path):
        if revision is not None and main > revision:
            break
        if keys_only:
            key = user_key(memoryview(record))
            if not key.startswith(prefix):
                continue
            if tombstone:
                live.pop(key, None)
            else:
                live[key] = KeyValue(key, b"", 0, 0, 0, 0)
            continue
        message = kv_pb2.KeyValue()
        try:
            message.ParseFromString(record)
        except DecodeError as exc:
            raise SnapshotInvalid(f"revision {main} holds a damaged KeyValue: {exc}") from exc
        if not message.key.startswith(prefix):
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
