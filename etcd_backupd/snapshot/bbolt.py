"""A read-only reader of bbolt database files, with bbolt's own structural check.

Pure: it reads the one file it is given with pread (no mmap, so memory does not grow with the
file) and never writes. A damaged file surfaces as `SnapshotInvalid` with one readable line.
Layout facts: docs/snapshot-format.md, section 2.

Pages are decoded a whole page at a time with `map`, `zip` and slicing rather than a Python loop
per element: a snapshot of small Kubernetes objects holds millions of elements.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import add, lt
from pathlib import Path
from typing import NamedTuple

from ..errors import SnapshotInvalid

MAGIC = 0xED0CDAED
VERSION = 2
BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_FLAG = 0x01
NO_FREELIST = 0xFFFFFFFFFFFFFFFF
MIN_PAGE_SIZE = 512
# bbolt probes for the second meta page up to this offset, so no larger page size can be found
MAX_PAGE_SIZE = 1024 << 14
FIRST_DATA_PAGE = 2
MAX_BUCKET_DEPTH = 64

PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
# magic, version, pageSize, flags, root, sequence, freelist, pgid, txid, checksum
META = struct.Struct("<IIIIQQQQQQ")
BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
BUCKET_HEADER = struct.Struct("<QQ")  # root pgid (0 = inline), sequence
_U64 = struct.Struct("<Q")
_HIGH_WORD = 1 << 32
_READ_AHEAD = 128 * 1024
_HEADER = PAGE_HEADER.size
META_END = _HEADER + META.size
_CHECKSUMMED = META.size - 8
# a freelist of 0xFFFF ids or more keeps its real count in the first id slot
_FREELIST_COUNT_OVERFLOW = 0xFFFF
_BYTE_SWAPPED_MAGIC = int.from_bytes(MAGIC.to_bytes(4, "little"), "big")

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF

_SHOWN = 40

# marks in the per-page map of what the walk has reached
_UNSEEN = 0
_HEAD = 1
_CONTINUATION = 2


def fnv1a64(data: bytes | memoryview) -> int:
    """FNV-1a, 64 bit: bbolt's meta page checksum."""
    value = _FNV_OFFSET
    for byte in bytes(data):
        value = ((value ^ byte) * _FNV_PRIME) & _MASK64
    return value


@dataclass(frozen=True, slots=True)
class Meta:
    page_size: int
    flags: int
    root: int
    sequence: int
    freelist: int
    pgid: int
    txid: int


class BadMeta(SnapshotInvalid):
    """One meta page is not valid; the message is the bare reason, to combine both pages'."""


def parse_meta(page: bytes | memoryview) -> Meta:
    """The meta of a page image (its first 80 bytes suffice); raises BadMeta."""
    if len(page) < META_END:
        raise BadMeta("cut short")
    magic, version, page_size, flags, root, sequence, freelist, pgid, txid, checksum = (
        META.unpack_from(page, _HEADER)
    )
    if magic == _BYTE_SWAPPED_MAGIC:
        raise BadMeta("written on a big-endian host, which this reader does not support")
    if magic != MAGIC:
        raise BadMeta("bad bbolt magic")
    if version != VERSION:
        raise BadMeta(f"unsupported bbolt version {version}")
    if fnv1a64(page[_HEADER : _HEADER + _CHECKSUMMED]) != checksum:
        raise BadMeta("bad meta checksum")
    return Meta(page_size, flags, root, sequence, freelist, pgid, txid)


def _plausible_page_size(size: int) -> bool:
    return MIN_PAGE_SIZE <= size <= MAX_PAGE_SIZE and size & (size - 1) == 0


class Bucket(NamedTuple):
    """A bucket's tree: a root page, or (root 0) an inline leaf page image held in its parent."""

    name: bytes
    root: int
    inline: bytes | None


class Leaf(NamedTuple):
    """The entries of one leaf page, in key order.

    Each value is `page[value_starts[i]:value_ends[i]]`: readers of a few bytes of each value
    index the page instead of paying for a view of every value. `plain` says the page holds
    no nested bucket and its keys and values lie back to back in entry order (bbolt always
    writes them so): `packed` is then exactly the bytes etcd's hash reads from this page.
    """

    page: bytes
    keys: list[bytes]
    value_starts: list[int]
    value_ends: list[int]
    flags: tuple[int, ...]
    plain: bool

    @property
    def values(self) -> list[memoryview]:
        view = memoryview(self.page)
        return list(map(view.__getitem__, map(slice, self.value_starts, self.value_ends)))

    @property
    def packed(self) -> memoryview | None:
        """Every key and value of a plain page back to back; None when the page is not plain
        and its entries must be read one by one."""
        if not self.plain:
            return None
        if not self.keys:
            return memoryview(b"")
        start = self.value_starts[0] - len(self.keys[0])
        return memoryview(self.page)[start : self.value_ends[-1]]


class BoltReader:
    """Reads a bbolt file. Iterating a bucket checks every page it reaches on the way; after
    every top-level bucket has been read, `check_unreached()` completes bbolt's check."""

    def __init__(self, path: Path) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise SnapshotInvalid(f"cannot read {path}: {exc.strerror}") from exc
        try:
            self.file_size = os.fstat(self._fd).st_size
            self.meta = self._choose_meta()
            self.page_size = self.meta.page_size
            self.pgid = self.meta.pgid
            self.db_size = self.pgid * self.page_size
            if self.pgid <= FIRST_DATA_PAGE:
                raise SnapshotInvalid(
                    f"not a bbolt database: high-water mark {self.pgid} leaves no data page"
                )
            if self.file_size < self.db_size:
                raise SnapshotInvalid(
                    f"truncated: file holds {self.file_size} bytes, database needs "
                    f"{self.db_size} (pgid {self.pgid} x {self.page_size})"
                )
            self._window = b""
            self._window_offset = 0
            self._last_page = 0
            # one byte per page: 0.025 % of the file at 4 KiB pages
            self._seen = bytearray(self.pgid)
            self._seen[:FIRST_DATA_PAGE] = bytes([_HEAD]) * FIRST_DATA_PAGE
            self._freed = self._read_freelist()
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        os.close(self._fd)

    @property
    def fd(self) -> int:
        """The open file, for a compiled walker that reads pages itself."""
        return self._fd

    @property
    def page_map(self) -> bytearray:
        """One byte per page marking what the walk has reached, shared with a compiled walker
        so that `check_unreached` accounts for the pages it read."""
        return self._seen

    def __enter__(self) -> BoltReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _read_page(self, pgid: int) -> bytes:
        """One page. bbolt writes a tree's pages mostly in key order, so once the walk asks
        for the page after the last one, it reads a window ahead and serves the next pages
        from it; a fragmented file is read a page at a time."""
        page_size = self.page_size
        at = pgid * page_size - self._window_offset
        sequential = pgid == self._last_page + 1
        self._last_page = pgid
        if 0 <= at <= len(self._window) - page_size:
            return self._window[at : at + page_size]
        self._window_offset = pgid * page_size
        size = _READ_AHEAD if sequential else page_size
        self._window = os.pread(self._fd, max(page_size, size), self._window_offset)
        if len(self._window) < page_size:
            raise SnapshotInvalid(
                f"truncated: the file ended within page {pgid} at offset {self._window_offset}"
            )
        return self._window[:page_size]

    def _pread(self, size: int, offset: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise SnapshotInvalid(
                f"truncated: the file ended within {size} bytes at offset {offset}"
            )
        return data

    def _choose_meta(self) -> Meta:
        if self.file_size < META_END:
            raise SnapshotInvalid(
                f"not a bbolt database: {self.file_size} bytes is too small to hold one"
            )
        first: Meta | BadMeta
        second: Meta | BadMeta = BadMeta("not found")
        try:
            first = parse_meta(self._pread(META_END, 0))
        except BadMeta as exc:
            first = exc
        if isinstance(first, Meta):
            if not _plausible_page_size(first.page_size):
                raise SnapshotInvalid(
                    f"not a bbolt database: implausible page size {first.page_size}"
                )
            if self.file_size < 2 * first.page_size:
                raise SnapshotInvalid(
                    f"truncated: file holds {self.file_size} bytes, less than the two meta "
                    f"pages of {first.page_size} bytes"
                )
            try:
                second = parse_meta(self._pread(META_END, first.page_size))
            except BadMeta as exc:
                second = exc
        else:
            second = self._probe_second_meta()
        valid = [meta for meta in (first, second) if isinstance(meta, Meta)]
        if not valid:
            if str(first) == str(second):
                detail = f"{first} in both"
            else:
                detail = f"meta 0: {first}; meta 1: {second}"
            raise SnapshotInvalid(f"not a bbolt database: no valid bbolt meta page ({detail})")
        # both copies in a sound file state one page size, and page 0's is the one in use
        page_size = valid[0].page_size
        meta = max(valid, key=lambda m: m.txid)
        if meta.page_size != page_size:
            raise SnapshotInvalid(
                f"damaged: the meta pages disagree on the page size ({page_size} and "
                f"{meta.page_size})"
            )
        return meta

    def _probe_second_meta(self) -> Meta | BadMeta:
        """Meta 1 where each page size bbolt allows would put it (meta 0 is unreadable)."""
        # a damaged meta 1 says more than the foreign bytes at the offsets that miss it
        reason = "not found"
        offset = 1024
        while offset <= MAX_PAGE_SIZE and offset + META_END <= self.file_size:
            try:
                meta = parse_meta(self._pread(META_END, offset))
            except BadMeta as exc:
                if reason in ("not found", "bad bbolt magic"):
                    reason = str(exc)
            else:
                if meta.page_size == offset:
                    return meta
            offset <<= 1
        return BadMeta(reason)

    def _mark(self, first: int, last: int) -> None:
        seen = self._seen
        span = last - first + 1
        if seen.count(_UNSEEN, first, last + 1) != span:
            twice = next(n for n in range(first, last + 1) if seen[n] != _UNSEEN)
            raise SnapshotInvalid(f"page {twice} is referenced twice")
        seen[first : last + 1] = bytes([_CONTINUATION]) * span
        seen[first] = _HEAD

    def _header(self, pgid: int, what: str) -> tuple[bytes, int, int, int]:
        """A page's first page, flags, count and overflow, with bbolt's checks of them."""
        if not FIRST_DATA_PAGE <= pgid < self.pgid:
            raise SnapshotInvalid(
                f"{what} {pgid} lies outside the database (pages {FIRST_DATA_PAGE} to "
                f"{self.pgid - 1})"
            )
        head = self._read_page(pgid)
        page_id, flags, count, overflow = PAGE_HEADER.unpack_from(head)
        if page_id != pgid:
            raise SnapshotInvalid(f"page {pgid} carries id {page_id}: the file is damaged")
        if pgid + overflow >= self.pgid:
            raise SnapshotInvalid(
                f"page {pgid} runs {overflow} overflow pages past the high-water mark {self.pgid}"
            )
        return head, flags, count, overflow

    def _page(self, pgid: int) -> tuple[int, int, bytes]:
        """Flags, element count and bytes of a branch or leaf page, marked reached.

        Of the overflow pages it reads only as far as the last element reaches, so that a
        damaged overflow count cannot make it hold the rest of the file in memory.
        """
        head, flags, count, overflow = self._header(pgid, "page")
        if flags != LEAF_PAGE and flags != BRANCH_PAGE:
            raise SnapshotInvalid(
                f"page {pgid} has flags {flags:#x}, expected a branch or leaf page"
            )
        if not overflow:
            if self._seen[pgid]:
                raise SnapshotInvalid(f"page {pgid} is referenced twice")
            self._seen[pgid] = _HEAD
            return flags, count, head
        self._mark(pgid, pgid + overflow)
        span = (overflow + 1) * self.page_size
        element = BRANCH_ELEMENT if flags == BRANCH_PAGE else LEAF_ELEMENT
        table_end = _HEADER + count * element.size
        if table_end > span:
            raise SnapshotInvalid(f"page {pgid} holds {count} elements that do not fit")
        if table_end > len(head):
            head = self._pread(table_end, pgid * self.page_size)
        table = memoryview(head)[_HEADER:table_end]
        if flags == BRANCH_PAGE:
            ends = [pos + ksize for pos, ksize, _ in BRANCH_ELEMENT.iter_unpack(table)]
        else:
            ends = [pos + ks + vs for _, pos, ks, vs in LEAF_ELEMENT.iter_unpack(table)]
        used = max([table_end, *_starts(count, element.size, ends)])
        if used > span:
            raise SnapshotInvalid(f"page {pgid}: an element runs past the page")
        if used > len(head):
            head = self._pread(used, pgid * self.page_size)
        return flags, count, head

    def _read_freelist(self) -> bytearray | None:
        """Which pages the freelist holds, or None when the file keeps none (etcd's way: free
        pages are then simply those no bucket reaches)."""
        pgid = self.meta.freelist
        if pgid == NO_FREELIST:
            return None
        head, flags, count, overflow = self._header(pgid, "freelist page")
        if flags != FREELIST_PAGE:
            raise SnapshotInvalid(f"freelist page {pgid} has flags {flags:#x}")
        self._mark(pgid, pgid + overflow)
        start = _HEADER
        if count == _FREELIST_COUNT_OVERFLOW:
            (count,) = _U64.unpack_from(head, _HEADER)
            start += _U64.size
        end = start + count * _U64.size
        if end > (overflow + 1) * self.page_size:
            raise SnapshotInvalid(f"freelist page {pgid} lists {count} ids that do not fit")
        if end > len(head):
            head = self._pread(end, pgid * self.page_size)
        freed = bytearray(self.pgid)
        for (page,) in _U64.iter_unpack(memoryview(head)[start:end]):
            if not FIRST_DATA_PAGE <= page < self.pgid:
                raise SnapshotInvalid(f"the freelist holds page {page}, outside the database")
            if freed[page]:
                raise SnapshotInvalid(f"the freelist holds page {page} twice")
            freed[page] = 1
        return freed

    def root_bucket(self) -> Bucket:
        return Bucket(b"", self.meta.root, None)

    def bucket_of(self, name: bytes, value: bytes | memoryview) -> Bucket:
        """The bucket an entry with the bucket flag stands for."""
        if len(value) < BUCKET_HEADER.size:
            raise SnapshotInvalid(f"bucket {_show(name)} has a {len(value)}-byte header")
        root, _ = BUCKET_HEADER.unpack_from(value)
        if root == 0:
            return Bucket(name, 0, bytes(value[BUCKET_HEADER.size :]))
        return Bucket(name, root, None)

    def buckets(self) -> Iterator[Bucket]:
        """The top-level buckets in name order."""
        for leaf in self.leaves(self.root_bucket()):
            for name, value, flags in zip(leaf.keys, leaf.values, leaf.flags, strict=True):
                if not flags & BUCKET_FLAG:
                    raise SnapshotInvalid(f"top-level entry {_show(name)} is not a bucket")
                yield self.bucket_of(name, value)

    def items(self, bucket: Bucket) -> Iterator[tuple[bytes, memoryview, int]]:
        """(key, value, flags) of every entry in key order."""
        for leaf in self.leaves(bucket):
            yield from zip(leaf.keys, leaf.values, leaf.flags, strict=True)

    def leaves(self, bucket: Bucket) -> Iterator[Leaf]:
        """The bucket's leaf pages in key order, each checked before it is yielded, with any
        bucket nested in it; except in the root bucket, whose buckets are the caller's to read.
        Values stay valid after the walk moves on."""
        nested = bucket.inline is not None or bucket.root != self.meta.root
        for leaf in self._tree(bucket):
            if nested and not leaf.plain:
                self._check_nested(leaf)
            yield leaf
            # a leaf with overflow pages can hold megabytes: let it go before reading the next
            del leaf

    def _tree(self, bucket: Bucket) -> Iterator[Leaf]:
        """The leaf pages of one bucket's own tree, checked, without entering nested buckets."""
        where = f"bucket {_show(bucket.name)}"
        if bucket.inline is not None:
            image = bucket.inline
            if len(image) < _HEADER:
                raise SnapshotInvalid(f"inline {where} is cut short")
            _, flags, count, _ = PAGE_HEADER.unpack_from(image)
            if flags != LEAF_PAGE:
                raise SnapshotInvalid(f"inline {where} has flags {flags:#x}, not a leaf page")
            yield _leaf(image, count, where, None)
            return
        previous = b""
        # depth first in key order; each frame bounds its subtree's keys to [low, high), where
        # b"" is no lower bound (no key is smaller) and None no upper one
        stack: list[tuple[int, bytes, bytes | None]] = [(bucket.root, b"", None)]
        while stack:
            pgid, low, high = stack.pop()
            flags, count, page = self._page(pgid)
            if flags == BRANCH_PAGE:
                keys, children = _branch(page, count, pgid)
                if keys[0] < low or (high is not None and keys[-1] >= high):
                    raise _out_of_range(pgid, where)
                stack.extend(reversed(list(zip(children, keys, [*keys[1:], high], strict=True))))
                continue
            leaf = _leaf(page, count, where, pgid)
            keys = leaf.keys
            if keys:
                if keys[0] < low or (high is not None and keys[-1] >= high):
                    raise _out_of_range(pgid, where)
                if previous and keys[0] <= previous:
                    raise SnapshotInvalid(f"keys out of order at page {pgid} of {where}")
                previous = keys[-1]
            yield leaf
            del leaf, page

    def _check_nested(self, leaf: Leaf) -> None:
        """Check every bucket nested in a leaf, however deep, with a stack of our own: a
        crafted file can nest buckets far deeper than Python's recursion limit. etcd never
        nests buckets, so a depth beyond MAX_BUCKET_DEPTH is refused: each level of inline
        buckets copies the image it sits in."""
        pending = [(bucket, 1) for bucket in reversed(self._nested_buckets(leaf))]
        while pending:
            bucket, depth = pending.pop()
            if depth > MAX_BUCKET_DEPTH:
                raise SnapshotInvalid(
                    f"bucket {_show(bucket.name)} is nested more than {MAX_BUCKET_DEPTH} "
                    "levels deep: not an etcd database"
                )
            for inner in self._tree(bucket):
                if not inner.plain:
                    found = self._nested_buckets(inner)
                    pending.extend((b, depth + 1) for b in reversed(found))

    def _nested_buckets(self, leaf: Leaf) -> list[Bucket]:
        return [
            self.bucket_of(key, value)
            for key, value, flags in zip(leaf.keys, leaf.values, leaf.flags, strict=True)
            if flags & BUCKET_FLAG
        ]

    def check_unreached(self) -> None:
        """The end of bbolt's check, once every bucket has been read: with a freelist, each
        page is either reached or free, never both, never neither."""
        freed = self._freed
        if freed is None:
            return
        seen = self._seen
        for page in range(FIRST_DATA_PAGE, self.pgid):
            if seen[page] and freed[page]:
                raise SnapshotInvalid(f"page {page} is in use and in the freelist")
            if not seen[page] and not freed[page]:
                raise SnapshotInvalid(f"page {page} is neither reachable nor free")

    def reached_pages(self) -> set[int]:
        """First pages of the branch and leaf pages read so far (and of the freelist)."""
        seen = self._seen
        return {n for n in range(FIRST_DATA_PAGE, self.pgid) if seen[n] == _HEAD}


def _show(name: bytes) -> str:
    """A bucket name for a one-line message, cut short when damage has made it long."""
    text = repr(name[:_SHOWN].decode("utf-8", "backslashreplace"))
    return text + "..." if len(name) > _SHOWN else text


def _out_of_range(pgid: int, where: str) -> SnapshotInvalid:
    return SnapshotInvalid(
        f"page {pgid} of {where} holds keys outside the range its parent gives it"
    )


def _starts(count: int, element_size: int, positions: Sequence[int]) -> list[int]:
    """Offsets in the page from offsets relative to each element, as bbolt stores them."""
    return list(map(add, range(_HEADER, _HEADER + count * element_size, element_size), positions))


def _first_past(ends: list[int], size: int) -> int:
    return next(index for index, end in enumerate(ends) if end > size)


def _strictly_ascending(keys: list[bytes]) -> bool:
    return all(map(lt, keys, islice(keys, 1, None)))


def _branch(page: bytes, count: int, pgid: int) -> tuple[list[bytes], list[int]]:
    table_end = _HEADER + count * BRANCH_ELEMENT.size
    if count == 0 or table_end > len(page):
        raise SnapshotInvalid(f"branch page {pgid} holds {count} elements that do not fit")
    # pos, ksize, pgid as u32, u32, u64: each element is four u32 words, the last two the pgid
    words = struct.unpack_from(f"<{4 * count}I", page, _HEADER)
    starts = _starts(count, BRANCH_ELEMENT.size, words[0::4])
    ends = list(map(add, starts, words[1::4]))
    if max(ends) > len(page):
        raise SnapshotInvalid(
            f"branch page {pgid}: element {_first_past(ends, len(page))} runs past the page"
        )
    keys = list(map(page.__getitem__, map(slice, starts, ends)))
    if not _strictly_ascending(keys):
        raise SnapshotInvalid(f"branch page {pgid} has keys out of order")
    children = list(map(add, words[2::4], map(_HIGH_WORD.__mul__, words[3::4])))
    return keys, children


def _leaf(page: bytes, count: int, where: str, pgid: int | None) -> Leaf:
    table_end = _HEADER + count * LEAF_ELEMENT.size
    size = len(page)
    if table_end > size:
        raise SnapshotInvalid(f"{_place(where, pgid)} holds {count} elements that do not fit")
    if count == 0:
        return Leaf(page, [], [], [], (), True)
    # flags, pos, ksize, vsize of every element, one after the other; a plain loop over them
    # measured faster than building each column with map(), from 2 elements a page to 100
    words = _element_table(count)(page, _HEADER)
    keys: list[bytes] = []
    value_starts: list[int] = []
    value_ends: list[int] = []
    contiguous = True
    element_at = _HEADER
    end = element_at + words[1]
    previous = b""
    for index in range(count):
        pos, key_size, value_size = words[4 * index + 1 : 4 * index + 4]
        key_start = element_at + pos
        key_end = key_start + key_size
        value_end = key_end + value_size
        if value_end > size:
            raise SnapshotInvalid(f"{_place(where, pgid)}: element {index} runs past the page")
        key = page[key_start:key_end]
        if index and key <= previous:
            raise SnapshotInvalid(f"{_place(where, pgid)} has keys out of order")
        if key_start != end:
            contiguous = False
        keys.append(key)
        value_starts.append(key_end)
        value_ends.append(value_end)
        previous = key
        end = value_end
        element_at += LEAF_ELEMENT.size
    flags = words[0::4]
    # any flag, not only the bucket flag, sends the entries one by one to their readers
    return Leaf(page, keys, value_starts, value_ends, flags, contiguous and not any(flags))


def _place(where: str, pgid: int | None) -> str:
    """Where a leaf sits, for a message: built only when there is something to report."""
    return f"inline {where}" if pgid is None else f"page {pgid} of {where}"


def _element_table(count: int) -> Callable[[bytes, int], tuple[int, ...]]:
    """An unpacker of `count` 16-byte elements as u32 words, made once per count."""
    unpack = _ELEMENT_TABLES.get(count)
    if unpack is None:
        unpack = _ELEMENT_TABLES[count] = struct.Struct(f"<{4 * count}I").unpack_from
    return unpack


_ELEMENT_TABLES: dict[int, Callable[[bytes, int], tuple[int, ...]]] = {}
