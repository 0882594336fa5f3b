"""The compiled walk of bucket `key` against the pure-Python one: on every database the bbolt
tests write, sound or damaged in any byte, both give the same figures, the same live keys at
every revision, or the same one-line diagnosis."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from etcd_backupd.errors import SnapshotInvalid
from etcd_backupd.snapshot import compiled
from etcd_backupd.snapshot.keyspace import live_key_names
from etcd_backupd.snapshot.status import DatabaseFigures, user_key, walk_database
from tests.unit.test_bbolt import (
    BUCKET_FLAG,
    STRUCTURE_DAMAGE,
    Database,
    Entry,
    branch_image,
    bucket,
    damaged_database,
    etcd_database,
    leaf_image,
    nested_chain,
    record,
    revision,
    small_snapshot,
    two_leaves,
)

pytestmark = pytest.mark.skipif(
    compiled.WALKER is None, reason="the package was built without its compiled walker"
)


class Spy:
    """Counts what the compiled walker answered: figures, or a hand-over to the pure reader."""

    def __init__(self, walker: Any) -> None:
        self.walker = walker
        self.walked = 0
        self.handed_over = 0

    def walk_revisions(self, *args: Any) -> Any:
        return self._count(self.walker.walk_revisions(*args))

    def live_names(self, *args: Any) -> Any:
        return self._count(self.walker.live_names(*args))

    def _count(self, result: Any) -> Any:
        if result is None:
            self.handed_over += 1
        else:
            self.walked += 1
        return result


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    spy = Spy(compiled.WALKER)
    monkeypatch.setattr(compiled, "WALKER", spy)
    yield spy


def outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except SnapshotInvalid as exc:
        return f"invalid: {exc}"


EVERY_REVISION = (None, -1, 0, 2, 3, 11, 12, 25, 39, 40, 41)


def same_both_ways(
    monkeypatch: pytest.MonkeyPatch, path: Path, revisions: tuple[int | None, ...] = EVERY_REVISION
) -> object:
    """walk_database and live_key_names at `revisions`, compiled, then pure Python."""

    def everything() -> list[object]:
        results = [outcome(lambda: walk_database(path))]
        for at in revisions:
            results.append(outcome(lambda at=at: live_key_names(path, revision=at)))
        results.append(outcome(lambda: live_key_names(path, prefix=b"/registry/pods/")))
        return results

    fast = everything()
    with monkeypatch.context() as pure:
        pure.setattr(compiled, "WALKER", None)
        slow = everything()
    assert fast == slow
    return fast[0]


def write_key_bucket(path: Path, history: list[Entry], *, page_size: int, per_leaf: int) -> None:
    """A database whose bucket `key` holds `history`, `per_leaf` records a leaf under one branch."""
    db = Database(page_size)
    parts = [history[i : i + per_leaf] for i in range(0, len(history), per_leaf)]
    leaves = [db.add(leaf_image(part)) for part in parts]
    root = db.add(
        branch_image([(part[0][0], page) for part, page in zip(parts, leaves, strict=True)])
    )
    path.write_bytes(db.build(db.add(leaf_image([(b"key", bucket(root), BUCKET_FLAG)]))))


@pytest.mark.parametrize("page_size", [1024, 4096])
def test_a_sound_database_is_walked_by_the_compiled_walker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: Spy, page_size: int
) -> None:
    db, root, _ = etcd_database(page_size)
    path = tmp_path / "db"
    path.write_bytes(db.build(root))
    figures = same_both_ways(monkeypatch, path)
    assert not isinstance(figures, str)
    assert spy.walked > 0 and spy.handed_over == 0


@pytest.mark.parametrize(
    "build", [build for _, build, _ in STRUCTURE_DAMAGE], ids=[n for n, _, _ in STRUCTURE_DAMAGE]
)
def test_structure_damage_reads_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build: Callable[[], bytes]
) -> None:
    path = tmp_path / "db"
    path.write_bytes(build())
    assert isinstance(same_both_ways(monkeypatch, path), str)


def test_a_deep_branch_tree_and_nested_buckets_read_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: Spy
) -> None:
    path = tmp_path / "db"
    path.write_bytes(nested_chain(70, inline=False))
    assert "nested more than 64" in str(same_both_ways(monkeypatch, path))
    path.write_bytes(damaged_database(two_leaves))
    same_both_ways(monkeypatch, path)
    # a tombstone of a key never put, the bump marker, a key of 200 bytes (two-byte length)
    db = Database()
    history = [
        (revision(2, tombstone=True), record(b"gone", b"", 2), 0),
        (revision(3), b"", 0),
        (revision(4), record(b"k" * 200, b"v", 4), 0),
    ]
    leaf = db.add(leaf_image(history))
    path.write_bytes(db.build(db.add(leaf_image([(b"key", bucket(leaf), BUCKET_FLAG)]))))
    figures = same_both_ways(monkeypatch, path)
    assert isinstance(figures, DatabaseFigures) and figures.live_keys == 1
    assert spy.walked > 0


def test_every_truncation_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = small_snapshot()
    path = tmp_path / "db"
    for size in range(0, len(data), 97):
        path.write_bytes(data[:size])
        assert isinstance(same_both_ways(monkeypatch, path), str)


def test_any_byte_damaged_reads_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: Spy
) -> None:
    data = small_snapshot()
    path = tmp_path / "damaged"
    # every third byte past the meta pages, each damaged one of three ways in turn
    for offset in range(2 * 1024, len(data), 3):
        damaged = bytearray(data)
        damaged[offset] ^= (0x01, 0x80, 0xFF)[offset // 3 % 3]
        path.write_bytes(damaged)
        same_both_ways(monkeypatch, path, (None, 20))
    # both kinds of answer were given: damage the compiled walk passed on, and figures
    assert spy.walked > 0 and spy.handed_over > 0


def test_random_rewrites_read_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = small_snapshot()
    rng = random.Random(4321)
    path = tmp_path / "damaged"
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            offset = rng.randrange(2 * 1024, len(data))
            damaged[offset : offset + 4] = rng.randbytes(4)
        path.write_bytes(damaged)
        same_both_ways(monkeypatch, path, (None, 20))


def test_many_keys_put_and_deleted_count_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: Spy
) -> None:
    """Enough keys, deleted and put again in random order, to grow the compiled walker's table
    of fingerprints several times and to shift entries back on every kind of deletion."""
    rng = random.Random(99)
    history: list[Entry] = []
    for main in range(2, 12002):
        name = f"/registry/pods/ns-{rng.randrange(8)}/pod-{rng.randrange(1000)}".encode()
        gone = rng.random() < 0.2
        history.append(
            (revision(main, tombstone=gone), record(name, b"" if gone else b"v", main), 0)
        )
    path = tmp_path / "db"
    write_key_bucket(path, history, page_size=4096, per_leaf=60)
    figures = same_both_ways(monkeypatch, path, (None, 1500))
    expected: dict[bytes, None] = {}
    for key, value, _ in history:
        name = user_key(value, 0, len(value))
        if len(key) == 17:
            expected[name] = None
        else:
            expected.pop(name, None)
    assert isinstance(figures, DatabaseFigures) and figures.live_keys == len(expected)
    assert spy.walked > 0 and spy.handed_over == 0


def test_a_key_space_that_grows_every_part_of_the_table_many_times_counts_right(
    tmp_path: Path, spy: Spy
) -> None:
    """Sixty thousand keys alive at once, then most of them deleted and a third put again: each
    part of the compiled walker's table of fingerprints grows several times, by a quarter each
    time, and shifts entries back across its end; the count is still the keys alive."""
    rng = random.Random(14)
    names = [f"/registry/configmaps/ns-{n % 97}/cm-{n}".encode() for n in range(60000)]
    operations = [(name, True) for name in names]
    gone = rng.sample(names, 45000)
    operations += [(name, False) for name in gone]
    operations += [(name, True) for name in rng.sample(gone, 15000)]
    history = [
        (revision(main, tombstone=not put), record(name, b"v" if put else b"", main), 0)
        for main, (name, put) in enumerate(operations, start=2)
    ]
    path = tmp_path / "db"
    write_key_bucket(path, history, page_size=65536, per_leaf=1000)
    figures = walk_database(path)
    assert figures.live_keys == 60000 - 45000 + 15000
    assert spy.walked == 1 and spy.handed_over == 0


@pytest.mark.parametrize("records", [31, 32, 33, 64, 65, 200])
def test_a_key_put_deleted_and_put_again_within_one_page_counts_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: Spy, records: int
) -> None:
    """The compiled walker fingerprints a page's records some at a time before applying them:
    one key written, deleted and written again on each side of every such boundary, the bump
    marker among them, and a tombstone last, leave the same keys alive as record by record."""
    history: list[Entry] = []
    for main in range(2, 2 + records):
        step = main - 2
        name = f"/registry/leases/holder-{step % 3}".encode()
        if step == records // 2:
            history.append((revision(main), b"", 0))
            continue
        gone = step % 5 == 4 or step == records - 1
        history.append(
            (revision(main, tombstone=gone), record(name, b"" if gone else b"v" * 30, main), 0)
        )
    db = Database(4096)
    leaf = db.add(leaf_image(history))
    path = tmp_path / "db"
    path.write_bytes(db.build(db.add(leaf_image([(b"key", bucket(leaf), BUCKET_FLAG)]))))
    figures = same_both_ways(monkeypatch, path, (None, records // 2 + 1, records))
    expected: dict[bytes, None] = {}
    for key, value, _ in history:
        name = user_key(value, 0, len(value))
        if len(key) == 17:
            expected[name] = None
        else:
            expected.pop(name, None)
    assert isinstance(figures, DatabaseFigures)
    assert figures.live_keys == len(expected) - (b"" in expected)
    assert spy.walked > 0 and spy.handed_over == 0


def test_live_key_names_keep_etcd_order_prefix_and_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: Spy
) -> None:
    """The compiled walker keeps the names apart from Python until it sorts them: against a
    model replayed record by record, the names come out in byte order (a byte of 0x00 or 0xFF,
    a name that is a prefix of another, names first seen out of order), only those under the
    prefix (shorter or longer than some names), and as of the revision asked for."""
    rng = random.Random(7)
    pool = [b"/a", b"/a/", b"/a\x00", b"/a\xff", b"/ab", b"/b", b"/a/x" * 40, b"/\xff\xff"]
    pool += [f"/a/{n:03d}".encode() for n in rng.sample(range(300), 300)]
    history: list[Entry] = []
    for main in range(2, 3002):
        name = rng.choice(pool)
        gone = rng.random() < 0.3
        history.append(
            (revision(main, tombstone=gone), record(name, b"" if gone else b"v", main), 0)
        )
    path = tmp_path / "db"
    write_key_bucket(path, history, page_size=4096, per_leaf=40)

    def model(prefix: bytes, at: int | None) -> list[bytes]:
        live: dict[bytes, None] = {}
        for key, value, _ in history:
            if at is not None and int.from_bytes(key[:8], "big") > at:
                break
            name = user_key(value, 0, len(value))
            if len(key) == 17:
                live[name] = None
            else:
                live.pop(name, None)
        return sorted(name for name in live if name.startswith(prefix))

    prefixes = [b"", b"/", b"/a", b"/a/", b"/a\xff", b"/a/x" * 41, b"/c"]
    revisions = (None, 1, 2, 777, 1500, 3001, 5000)
    for prefix in prefixes:
        for at in revisions:
            assert live_key_names(path, prefix=prefix, revision=at) == model(prefix, at)
    assert spy.handed_over == 0 and spy.walked == len(prefixes) * len(revisions)


def test_leaves_of_large_values_in_turn_read_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: Spy
) -> None:
    """The compiled walker reads a leaf with overflow pages into the block the last such leaf
    left, or into a larger one: leaves of values larger, smaller and larger again than those
    before, one of them with many records, give the same figures and keys, and damage to one of
    them the same diagnosis."""
    sizes = [3000, 9000, 2000, 600, 12000, 5000, 12000, 40]
    history: list[Entry] = []
    leaves: list[tuple[bytes, bytes]] = []
    db = Database(1024)
    for main, size in enumerate(sizes, start=2):
        records = [
            (
                revision(main, sub),
                record(f"/registry/big/{main}-{sub}".encode(), b"v" * size, main),
                0,
            )
            for sub in range(1 if size > 100 else 30)
        ]
        history += records
        leaves.append((records[0][0], db.add(leaf_image(records))))
        db.skip(main % 3)
    root = db.add(branch_image([(first, page) for first, page in leaves]))
    path = tmp_path / "db"
    data = db.build(db.add(leaf_image([(b"key", bucket(root), BUCKET_FLAG)])))
    path.write_bytes(data)
    figures = same_both_ways(monkeypatch, path, (None, 4, 7))
    assert isinstance(figures, DatabaseFigures) and figures.live_keys == 7 + 30
    assert spy.walked > 0 and spy.handed_over == 0
    # a value cut short in the leaf after a larger one
    damaged = bytearray(data)
    at = data.index(b"/registry/big/5-0")
    damaged[at + 20 : at + 24] = b"\xff\xff\xff\xff"
    path.write_bytes(damaged)
    same_both_ways(monkeypatch, path, (None, 4))
