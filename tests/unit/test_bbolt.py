"""The bbolt reader and etcd's figures on small databases written here, page by page: what an
operator sees for every kind of damage, and that no damage escapes as anything but
SnapshotInvalid."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import crc32c
import pytest
from etcd3.etcdrpc import kv_pb2

from etcd_backupd.cli import main as cli_main
from etcd_backupd.errors import SnapshotInvalid
from etcd_backupd.snapshot.bbolt import (
    BRANCH_ELEMENT,
    BRANCH_PAGE,
    BUCKET_FLAG,
    BUCKET_HEADER,
    FREELIST_PAGE,
    LEAF_ELEMENT,
    LEAF_PAGE,
    MAGIC,
    META,
    META_PAGE,
    NO_FREELIST,
    PAGE_HEADER,
    VERSION,
    BadMeta,
    BoltReader,
    fnv1a64,
    parse_meta,
)
from etcd_backupd.snapshot.status import (
    user_key,
    verify_database,
    verify_snapshot,
    walk_database,
)

Entry = tuple[bytes, bytes, int]  # key, value, element flags


def leaf_image(entries: list[Entry]) -> bytes:
    """A leaf page as bbolt writes it: element table, then each key and value back to back."""
    table = b""
    data = b""
    for index, (key, value, flags) in enumerate(entries):
        # a position counts from the element's own address to its key
        pos = (len(entries) - index) * LEAF_ELEMENT.size + len(data)
        table += LEAF_ELEMENT.pack(flags, pos, len(key), len(value))
        data += key + value
    return PAGE_HEADER.pack(0, LEAF_PAGE, len(entries), 0) + table + data


def branch_image(children: list[tuple[bytes, int]]) -> bytes:
    table = b""
    data = b""
    for index, (key, child) in enumerate(children):
        pos = (len(children) - index) * BRANCH_ELEMENT.size + len(data)
        table += BRANCH_ELEMENT.pack(pos, len(key), child)
        data += key
    return PAGE_HEADER.pack(0, BRANCH_PAGE, len(children), 0) + table + data


def bucket(root: int = 0, inline: list[Entry] | None = None) -> bytes:
    return BUCKET_HEADER.pack(root, 0) + (leaf_image(inline) if inline is not None else b"")


def meta_page(number: int, page_size: int, root: int, pgid: int, txid: int, freelist: int) -> bytes:
    body = META.pack(MAGIC, VERSION, page_size, 0, root, 0, freelist, pgid, txid, 0)[:-8]
    image = PAGE_HEADER.pack(number, META_PAGE, 0, 0) + body + struct.pack("<Q", fnv1a64(body))
    return image.ljust(page_size, b"\0")


@dataclass
class Database:
    """A bbolt file under construction: pages are placed from page 2 in the order added."""

    page_size: int = 1024
    pages: dict[int, bytes] = field(default_factory=dict)
    next_page: int = 2

    def add(self, image: bytes) -> int:
        number = self.next_page
        span = -(-len(image) // self.page_size)
        _, flags, count, _ = PAGE_HEADER.unpack_from(image)
        page = PAGE_HEADER.pack(number, flags, count, span - 1) + image[PAGE_HEADER.size :]
        self.pages[number] = page.ljust(span * self.page_size, b"\0")
        self.next_page += span
        return number

    def skip(self, count: int) -> None:
        """Leave free pages, as etcd does (it keeps no freelist)."""
        self.next_page += count

    def build(self, root: int, txid: int = 7, freelist: int = NO_FREELIST) -> bytes:
        out = bytearray(self.next_page * self.page_size)
        for number, (tx, pgid) in enumerate([(txid, self.next_page), (txid - 1, self.next_page)]):
            out[number * self.page_size : (number + 1) * self.page_size] = meta_page(
                number, self.page_size, root, pgid, tx, freelist
            )
        for number, page in self.pages.items():
            out[number * self.page_size : number * self.page_size + len(page)] = page
        return bytes(out)


def revision(main: int, sub: int = 0, tombstone: bool = False) -> bytes:
    return main.to_bytes(8, "big") + b"_" + sub.to_bytes(8, "big") + (b"t" if tombstone else b"")


def record(key: bytes, value: bytes, mod: int) -> bytes:
    message = kv_pb2.KeyValue(key=key, value=value, create_revision=mod, mod_revision=mod)
    result: bytes = message.SerializeToString()
    return result


def etcd_history() -> list[Entry]:
    """Bucket `key` after puts, an overwrite and a delete: 40 revisions, 29 keys live."""
    entries = []
    for main in range(2, 40):
        key = f"/registry/pods/default/pod-{main % 30:03d}".encode()
        entries.append((revision(main), record(key, b"spec " * (main % 9), main), 0))
    entries.append(
        (revision(40, tombstone=True), record(b"/registry/pods/default/pod-005", b"", 40), 0)
    )
    return entries


def etcd_database(page_size: int = 1024) -> tuple[Database, int, list[tuple[bytes, list[Entry]]]]:
    """An etcd-shaped database: bucket `key` over a branch and three leaves (one value with
    overflow pages), the small buckets inline, a free page between; and its buckets."""
    db = Database(page_size)
    history = etcd_history()
    history[10] = (history[10][0], record(b"/registry/configmaps/big", b"x" * 3000, 12), 0)
    thirds = [history[:12], history[12:25], history[25:]]
    leaves = [db.add(leaf_image(part)) for part in thirds]
    db.skip(1)
    key_root = db.add(
        branch_image([(part[0][0], page) for part, page in zip(thirds, leaves, strict=True)])
    )
    buckets: list[tuple[bytes, list[Entry]]] = [
        (b"cluster", [(b"clusterVersion", b"3.5.0", 0)]),
        (b"key", history),
        (b"lease", []),
        (b"members", [(b"8e9e05c52164694d", b'{"id":1}', 0)]),
        (b"meta", [(b"consistent_index", (41).to_bytes(8, "big"), 0), (b"term", b"\0" * 8, 0)]),
    ]
    top = [
        (name, bucket(key_root) if name == b"key" else bucket(inline=entries), BUCKET_FLAG)
        for name, entries in buckets
    ]
    root = db.add(leaf_image(top))
    return db, root, buckets


def expected_hash(buckets: list[tuple[bytes, list[Entry]]]) -> int:
    stream = b"".join(name + b"".join(k + v for k, v, _ in entries) for name, entries in buckets)
    value: int = crc32c.crc32c(stream)
    return value


def write(tmp_path: Path, data: bytes, name: str = "db") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def sealed(data: bytes) -> bytes:
    return data + hashlib.sha256(data).digest()


def invalid(call: Callable[[Path], object], path: Path) -> str:
    with pytest.raises(SnapshotInvalid) as caught:
        call(path)
    message = str(caught.value)
    assert message and "\n" not in message
    return message


# --- pure pieces ---------------------------------------------------------------------------


def test_fnv1a64_known_values() -> None:
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(memoryview(b"foobar")) == 0x85944171F73967E8


def test_crc32c_is_castagnoli_and_composes_across_writes() -> None:
    assert crc32c.crc32c(b"123456789") == 0xE3069283
    assert crc32c.crc32c(b"world", crc32c.crc32c(b"hello ")) == crc32c.crc32c(b"hello world")
    assert crc32c.crc32c(memoryview(b"xhello")[1:]) == crc32c.crc32c(b"hello")


def test_parse_meta_reads_every_field() -> None:
    meta = parse_meta(meta_page(0, 4096, root=9, pgid=12, txid=33, freelist=NO_FREELIST))
    assert (meta.page_size, meta.root, meta.pgid, meta.txid, meta.freelist) == (
        4096,
        9,
        12,
        33,
        NO_FREELIST,
    )


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (16, b"\0\0\0\0", "bad bbolt magic"),
        (16, MAGIC.to_bytes(4, "big"), "big-endian"),
        (20, (3).to_bytes(4, "little"), "unsupported bbolt version 3"),
        (64, b"\xff", "bad meta checksum"),
        (72, b"\xff", "bad meta checksum"),
    ],
)
def test_parse_meta_says_why_a_meta_is_bad(offset: int, value: bytes, reason: str) -> None:
    page = bytearray(meta_page(0, 4096, root=3, pgid=4, txid=2, freelist=NO_FREELIST))
    page[offset : offset + len(value)] = value
    with pytest.raises(BadMeta, match=reason):
        parse_meta(bytes(page))


def test_user_key_reads_field_one_with_a_long_length() -> None:
    key = b"/registry/" + b"k" * 300
    encoded = record(key, b"v" * 1000, 5)
    assert user_key(b"pad" + encoded + b"pad", 3, 3 + len(encoded)) == key
    short = record(b"/short", b"v", 5)
    assert user_key(b"pad" + short, 3, 3 + len(short)) == b"/short"
    # the empty KeyValue of key "" that a restore with --bump-revision writes
    assert user_key(b"pad" + b"cdefghij\x01", 3, 3) == b""
    for damaged in [b"\x12\x01a", b"\x0a\xff", b"\x0a\x05ab"]:
        # the bytes after the record belong to the next one: the key must end within its own
        page = b"pad" + damaged + b"cdefghij\x01"
        with pytest.raises(SnapshotInvalid):
            user_key(page, 3, 3 + len(damaged))


# --- etcd's figures ------------------------------------------------------------------------


def test_figures_of_an_etcd_shaped_database(tmp_path: Path) -> None:
    db, root, buckets = etcd_database()
    data = db.build(root)
    figures = walk_database(write(tmp_path, data))
    assert figures.hash == expected_hash(buckets)
    assert figures.revision == 40
    assert figures.total_keys == sum(len(entries) for _, entries in buckets)
    assert figures.live_keys == 29
    assert figures.total_size == len(data)
    assert (figures.page_size, figures.txid) == (1024, 7)
    assert (figures.cluster_version, figures.storage_version) == ("3.5.0", None)


def test_live_keys_follow_the_newest_revision_of_each_key(tmp_path: Path) -> None:
    db = Database()
    history = [
        (revision(2), record(b"a", b"1", 2), 0),
        (revision(3, tombstone=True), record(b"a", b"", 3), 0),
        (revision(4), record(b"b", b"1", 4), 0),
        (revision(5), record(b"a", b"2", 5), 0),
        (revision(6, tombstone=True), record(b"b", b"", 6), 0),
        (revision(7), record(b"c", b"1", 7), 0),
    ]
    top = [
        (b"key", bucket(inline=history), BUCKET_FLAG),
        (b"meta", bucket(inline=[(b"storageVersion", b"3.6.0", 0)]), BUCKET_FLAG),
    ]
    figures = walk_database(write(tmp_path, db.build(db.add(leaf_image(top)))))
    assert (figures.live_keys, figures.revision, figures.storage_version) == (2, 7, "3.6.0")


def test_a_nested_bucket_gives_its_name_only_to_the_hash_and_its_pages_are_checked(
    tmp_path: Path,
) -> None:
    db = Database()
    inner = db.add(leaf_image([(b"deep", b"value", 0)]))
    entries: list[Entry] = [(b"a", b"1", 0), (b"sub", bucket(inner), BUCKET_FLAG), (b"z", b"2", 0)]
    top = [(b"outer", bucket(inline=entries), BUCKET_FLAG)]
    path = write(tmp_path, db.build(db.add(leaf_image(top))))
    figures = walk_database(path)
    assert figures.hash == crc32c.crc32c(b"outer" + b"a1" + b"sub" + b"z2")
    assert figures.total_keys == 3
    with BoltReader(path) as reader:
        for outer in reader.buckets():
            list(reader.items(outer))
        assert inner in reader.reached_pages()


def test_a_raw_database_passes_without_trailer_only_when_allowed(tmp_path: Path) -> None:
    db, root, _ = etcd_database(4096)
    data = db.build(root)
    path = write(tmp_path, data)
    message = invalid(verify_snapshot, path)
    assert message == (
        "no SHA-256 trailer: not a snapshot saved from etcd's snapshot API "
        "(a raw member/snap/db copy?)"
    )
    status = verify_snapshot(path, require_trailer=False)
    assert not status.has_trailer
    assert status.sha256 == hashlib.sha256(data).hexdigest()
    assert verify_database(path).hash == status.hash
    assert "not the expected" in invalid(
        lambda p: verify_database(p, expected_sha256="00" * 32), path
    )


def test_a_snapshot_with_its_trailer(tmp_path: Path) -> None:
    db, root, buckets = etcd_database(4096)
    data = sealed(db.build(root))
    path = write(tmp_path, data)
    status = verify_snapshot(path)
    assert status.has_trailer
    assert status.hash == expected_hash(buckets)
    assert status.file_size == len(data) == status.total_size + 32
    assert status.sha256 == data[-32:].hex()
    assert json.loads(json.dumps(status.to_dict()))["revision"] == 40


def test_the_streamed_digest_replaces_hashing_again(tmp_path: Path) -> None:
    db, root, _ = etcd_database(4096)
    data = sealed(db.build(root))
    path = write(tmp_path, data)
    assert verify_snapshot(path, expected_sha256=data[-32:].hex()).sha256 == data[-32:].hex()
    message = invalid(lambda p: verify_snapshot(p, expected_sha256="ab" * 32), path)
    assert "does not match the snapshot's trailer" in message


def test_pages_beyond_the_database_before_the_trailer_are_rejected(tmp_path: Path) -> None:
    db, root, _ = etcd_database(4096)
    message = invalid(verify_snapshot, write(tmp_path, sealed(db.build(root) + bytes(4096))))
    assert "pages are missing or extra" in message


def test_meta_page_choice(tmp_path: Path) -> None:
    db, root, _ = etcd_database(4096)
    data = bytearray(db.build(root, txid=9))
    path = write(tmp_path, bytes(data))
    with BoltReader(path) as reader:
        assert reader.meta.txid == 9
    data[16 + 60] ^= 1  # meta 0, the newer one, fails its checksum: fall back to meta 1
    path = write(tmp_path, bytes(data))
    with BoltReader(path) as reader:
        assert reader.meta.txid == 8
    data[4096 + 16 + 60] ^= 1
    message = invalid(BoltReader, write(tmp_path, bytes(data)))
    assert message == "not a bbolt database: no valid bbolt meta page (bad meta checksum in both)"


@pytest.mark.parametrize("page_size", [1024, 4096, 16384])
def test_meta_zero_wiped_the_page_size_is_found_from_meta_one(
    tmp_path: Path, page_size: int
) -> None:
    db, root, buckets = etcd_database(page_size)
    data = bytearray(db.build(root))
    data[:page_size] = bytes(page_size)
    figures = walk_database(write(tmp_path, bytes(data)))
    assert (figures.page_size, figures.txid) == (page_size, 6)
    assert figures.hash == expected_hash(buckets)


# --- bbolt's structural check --------------------------------------------------------------


def damaged_database(change: Callable[[Database], int]) -> bytes:
    db = Database()
    root = change(db)
    return db.build(root)


def two_leaves(db: Database, first: int | None = None, second: int | None = None) -> int:
    left = db.add(leaf_image([(revision(2), record(b"a", b"1", 2), 0)]))
    right = db.add(leaf_image([(revision(3), record(b"b", b"1", 3), 0)]))
    branch = db.add(
        branch_image([(revision(2), left if first is None else first), (revision(3), right)])
        if second is None
        else branch_image([(revision(2), left), (revision(3), second)])
    )
    return db.add(leaf_image([(b"key", bucket(branch), BUCKET_FLAG)]))


def patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


STRUCTURE_DAMAGE: list[tuple[str, Callable[[], bytes], str]] = [
    (
        "twice",
        lambda: damaged_database(lambda db: two_leaves(db, second=2)),
        "page 2 is referenced twice",
    ),
    (
        "beyond",
        lambda: damaged_database(lambda db: two_leaves(db, second=99)),
        "page 99 lies outside the database (pages 2 to 5)",
    ),
    (
        "meta",
        lambda: damaged_database(lambda db: two_leaves(db, first=1)),
        "page 1 lies outside the database",
    ),
    (
        "wrong id",
        lambda: patch(damaged_database(two_leaves), 3 * 1024, (7).to_bytes(8, "little")),
        "page 3 carries id 7",
    ),
    (
        "not a tree page",
        lambda: patch(damaged_database(two_leaves), 3 * 1024 + 8, bytes([FREELIST_PAGE, 0])),
        "page 3 has flags 0x10, expected a branch or leaf page",
    ),
    (
        "overflow",
        lambda: patch(damaged_database(two_leaves), 3 * 1024 + 12, (3).to_bytes(4, "little")),
        "page 3 runs 3 overflow pages past the high-water mark 6",
    ),
    (
        "element count",
        lambda: patch(damaged_database(two_leaves), 3 * 1024 + 10, (200).to_bytes(2, "little")),
        "holds 200 elements that do not fit",
    ),
    (
        "value size",
        lambda: patch(damaged_database(two_leaves), 3 * 1024 + 28, (5000).to_bytes(4, "little")),
        "element 0 runs past the page",
    ),
    (
        "keys swapped across pages",
        lambda: damaged_database(
            lambda db: two_leaves(
                db, second=db.add(leaf_image([(revision(1), record(b"b", b"1", 1), 0)]))
            )
        ),
        "holds keys outside the range its parent gives it",
    ),
    (
        "keys out of order in a page",
        lambda: damaged_database(
            lambda db: db.add(
                leaf_image([(b"b", bucket(inline=[]), BUCKET_FLAG), (b"a", bucket(inline=[]), 1)])
            )
        ),
        "has keys out of order",
    ),
    (
        "duplicate key",
        lambda: damaged_database(
            lambda db: db.add(
                leaf_image([(b"a", bucket(inline=[]), BUCKET_FLAG), (b"a", bucket(inline=[]), 1)])
            )
        ),
        "has keys out of order",
    ),
    (
        "not a bucket",
        lambda: damaged_database(lambda db: db.add(leaf_image([(b"key", b"value", 0)]))),
        "top-level entry 'key' is not a bucket",
    ),
    (
        "revision",
        lambda: damaged_database(
            lambda db: db.add(
                leaf_image([(b"key", bucket(inline=[(b"short", b"", 0)]), BUCKET_FLAG)])
            )
        ),
        "bucket 'key' holds a key that is not an etcd revision",
    ),
    (
        "record",
        lambda: damaged_database(
            lambda db: db.add(
                leaf_image([(b"key", bucket(inline=[(revision(2), b"\xff\xff", 0)]), 1)])
            )
        ),
        "bucket 'key' holds a record that is not an etcd KeyValue near revision 2",
    ),
]


@pytest.mark.parametrize(
    ("build", "reason"),
    [(build, reason) for _, build, reason in STRUCTURE_DAMAGE],
    ids=[name for name, _, _ in STRUCTURE_DAMAGE],
)
def test_structure_damage_is_named(tmp_path: Path, build: Callable[[], bytes], reason: str) -> None:
    assert reason in invalid(walk_database, write(tmp_path, build()))


def test_an_untouched_two_leaf_tree_passes(tmp_path: Path) -> None:
    figures = walk_database(write(tmp_path, damaged_database(two_leaves)))
    assert (figures.total_keys, figures.revision, figures.live_keys) == (2, 3, 2)


def test_truncated_database(tmp_path: Path) -> None:
    data = damaged_database(two_leaves)
    message = invalid(walk_database, write(tmp_path, data[: 5 * 1024]))
    assert message == "truncated: file holds 5120 bytes, database needs 6144 (pgid 6 x 1024)"
    message = invalid(walk_database, write(tmp_path, data[:1500]))
    assert message == "truncated: file holds 1500 bytes, less than the two meta pages of 1024 bytes"


def freelist_database(free: list[int], waste: int = 1) -> bytes:
    db = Database()
    root = db.add(leaf_image([(b"meta", bucket(inline=[]), BUCKET_FLAG)]))
    db.skip(waste)
    ids = b"".join(page.to_bytes(8, "little") for page in free)
    freelist = db.add(PAGE_HEADER.pack(0, FREELIST_PAGE, len(free), 0) + ids)
    return db.build(root, freelist=freelist)


def test_a_synced_freelist_accounts_for_every_page(tmp_path: Path) -> None:
    walk_database(write(tmp_path, freelist_database([3])))
    assert "page 3 is neither reachable nor free" in invalid(
        walk_database, write(tmp_path, freelist_database([]))
    )
    assert "page 2 is in use and in the freelist" in invalid(
        walk_database, write(tmp_path, freelist_database([2, 3]))
    )
    assert "the freelist holds page 3 twice" in invalid(
        walk_database, write(tmp_path, freelist_database([3, 3]))
    )


# --- every damage is a SnapshotInvalid, nothing else ----------------------------------------


def small_snapshot() -> bytes:
    db, root, _ = etcd_database(1024)
    return db.build(root)


def test_every_truncation_of_a_database_is_rejected(tmp_path: Path) -> None:
    data = small_snapshot()
    path = tmp_path / "db"
    for size in range(len(data)):
        path.write_bytes(data[:size])
        with pytest.raises(SnapshotInvalid):
            walk_database(path)


def test_any_byte_damaged_reads_as_invalid_or_as_another_sound_database(tmp_path: Path) -> None:
    data = small_snapshot()
    good = walk_database(write(tmp_path, data))
    path = tmp_path / "damaged"
    outcomes = {"invalid": 0, "changed": 0, "same": 0}
    for offset in range(len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= (0x01, 0x80, 0xFF)[offset % 3]
        path.write_bytes(damaged)
        try:
            figures = walk_database(path)
        except SnapshotInvalid:
            outcomes["invalid"] += 1
        else:
            outcomes["changed" if figures != good else "same"] += 1
    # the unchecked bytes are padding, free pages and meta fields etcd never reads
    assert outcomes["invalid"] > len(data) // 20
    assert outcomes["changed"] > 0


def test_random_rewrites_never_escape_as_another_error(tmp_path: Path) -> None:
    data = small_snapshot()
    good = walk_database(write(tmp_path, data))
    rng = random.Random(1234)
    path = tmp_path / "damaged"
    outcomes = {"invalid": 0, "sound": 0}
    for _ in range(3000):
        damaged = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            offset = rng.randrange(len(data))
            damaged[offset : offset + 4] = rng.randbytes(4)
        path.write_bytes(damaged)
        try:
            figures = walk_database(path)
        except SnapshotInvalid:
            outcomes["invalid"] += 1
            continue
        outcomes["sound"] += 1
        # what the check accepts has the layout it checked: a rewrite may change values (the
        # hash) or revisions, never the pages or how many keys they hold
        shape = (figures.page_size, figures.total_size, figures.entries, figures.total_keys)
        assert shape == (good.page_size, good.total_size, good.entries, good.total_keys)
    assert outcomes["invalid"] > 300
    assert outcomes["sound"] > 300


# --- files that are not snapshots ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not an etcd snapshot: the file is empty (0 bytes is not whole pages plus 32)"),
        (b"apiVersion: v1\nkind: Pod\n", "not an etcd snapshot: a text file"),
        (gzip.compress(b"x" * 5000), "not an etcd snapshot: gzip-compressed data"),
        (b"\x28\xb5\x2f\xfd" + bytes(100), "not an etcd snapshot: zstd-compressed data"),
        (
            b"age-encryption.org/v1\n-> X25519 abc\n" + bytes(200),
            "not an etcd snapshot: age-encrypted data, decrypt it first",
        ),
        (random.Random(5).randbytes(4096), "not an etcd snapshot: no bbolt header"),
        (sealed(random.Random(6).randbytes(4096)), "no valid bbolt meta page (bad bbolt magic"),
        (small_snapshot()[:3000], "truncated: file holds 3000 bytes, database needs 13312"),
        (small_snapshot()[:2048], "truncated: file holds 2048 bytes, database needs 13312"),
        (sealed(small_snapshot())[:-1], "truncated: 13343 bytes is not whole pages plus 32"),
    ],
    ids=[
        "empty",
        "text",
        "gzip",
        "zstd",
        "age",
        "random",
        "random-sealed",
        "cut",
        "cut-at-page",
        "trailer",
    ],
)
def test_foreign_files_are_named(tmp_path: Path, content: bytes, reason: str) -> None:
    assert reason in invalid(verify_snapshot, write(tmp_path, content))


def test_a_missing_file(tmp_path: Path) -> None:
    message = invalid(verify_snapshot, tmp_path / "nope.db")
    assert message.startswith("cannot read") and "No such file" in message


def nested_chain(depth: int, *, inline: bool) -> bytes:
    """A database whose bucket `key` holds a bucket, which holds a bucket, `depth` levels deep:
    inline images inside each other, or a page per level."""
    db = Database(4096)
    if inline:
        innermost: list[Entry] = [(b"leaf", b"value", 0)]
        for level in range(depth):
            innermost = [(b"n%d" % level, bucket(inline=innermost), BUCKET_FLAG)]
        top = [(b"key", bucket(inline=innermost), BUCKET_FLAG)]
    else:
        child = db.add(leaf_image([(b"leaf", b"value", 0)]))
        for level in range(depth):
            child = db.add(leaf_image([(b"n%d" % level, bucket(child), BUCKET_FLAG)]))
        top = [(b"key", bucket(child), BUCKET_FLAG)]
    return sealed(db.build(db.add(leaf_image(top))))


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "paged"])
def test_buckets_nested_past_the_recursion_limit_are_invalid_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], inline: bool
) -> None:
    path = write(tmp_path, nested_chain(3000, inline=inline))
    assert "nested more than 64 levels deep" in invalid(verify_snapshot, path)
    for command in (
        ["verify", str(path)],
        ["inspect", str(path)],
        ["inspect", "--keys-only", str(path)],
    ):
        capsys.readouterr()
        assert cli_main(command) == SnapshotInvalid.exit_code
        err = capsys.readouterr().err
        assert "nested more than 64 levels deep" in err and err.count("\n") == 1


def test_buckets_nested_a_few_levels_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, nested_chain(60, inline=False))
    with BoltReader(path) as reader:
        for top in reader.buckets():
            assert [key for key, _, _ in reader.items(top)] == [b"n59"]
        assert len(reader.reached_pages()) == 62
