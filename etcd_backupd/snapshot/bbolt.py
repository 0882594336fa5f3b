"""A read-only reader of bbolt database files, with bbolt's own structural check.

Pure: it reads the one file it is given with pread (no mmap, so memory does not grow with the
file) and never writes. Every way a damaged file can fail surfaces as `SnapshotInvalid` with one
readable line. Layout facts: ../shared/snapshot-format.md, section 4.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import SnapshotInvalid

MAGIC = 0xED0CDAED
VERSION = 2
BRANCH = 0x01
LEAF = 0x02
META_PAGE = 0x04
FREELIST = 0x10
BUCKET_LEAF_FLAG = 0x01
NO_FREELIST = 0xFFFFFFFFFFFFFFFF
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 1 << 20

_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_META = struct.Struct("<IIIIQQQQQQ")  # magic .. txid, checksum
_BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
_LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BUCKET_HEADER = struct.Struct("<QQ")  # root pgid, sequence
_HEADER_SIZE = _PAGE_HEADER.size
_HEAD = 2
_OVERFLOW = 1
_META_CHECKED = 56  # the checksum covers the meta up to (not including) itself
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = 0xFFFFFFFFFFFFFFFF


def fnv1a64(data: bytes) -> int:
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & _MASK64
    return value


@dataclass(frozen=True)
class Meta:
    page_size: int
    flags: int
    root: int
    sequence: int
    freelist: int
    pgid: int
    txid: int


def parse_meta(page: bytes) -> Meta | str:
    """A meta page's content, or why it is not a valid one."""
    if len(page) < _HEADER_SIZE + _META.size:
        return "too short"
    fields = _META.unpack_from(page, _HEADER_SIZE)
    magic, version, page_size, flags, root, sequence, freelist, pgid, txid, checksum = fields
    if magic != MAGIC:
        return "bad bbolt magic"
    if version != VERSION:
        return f"unsupported bbolt version {version}"
    if fnv1a64(page[_HEADER_SIZE : _HEADER_SIZE + _META_CHECKED]) != checksum:
        return "meta checksum mismatch"
    return Meta(page_size, flags, root, sequence, freelist, pgid, txid)


@dataclass
class Bucket:
    """A bucket's tree: a root page, or an inline leaf page image held in its parent."""

    name: bytes
    root: int
    inline: memoryview | None


class BoltReader:
    """Reads a bbolt file; iterating a bucket also checks the pages it touches."""

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
            if self.pgid < 2:
                raise SnapshotInvalid(f"not a database: high-water mark {self.pgid} is below 2")
            if self.file_size < self.db_size:
                raise SnapshotInvalid(
                    f"truncated: file holds {self.file_size} bytes, the database needs "
                    f"{self.db_size} (pgid {self.pgid} x {self.page_size})"
                )
            # one byte per page (head or overflow): every page may be referenced only once
            self._seen = bytearray(self.pgid)
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> BoltReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _pread(self, size: int, offset: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise SnapshotInvalid(f"truncated: cannot read {size} bytes at offset {offset}")
        return data

    def _choose_meta(self) -> Meta:
        if self.file_size < 2 * MIN_PAGE_SIZE:
            raise SnapshotInvalid(
                f"not an etcd snapshot: {self.file_size} bytes is too small for a bbolt database"
            )
        first = parse_meta(self._pread(MIN_PAGE_SIZE, 0))
        page_size = first.page_size if isinstance(first, Meta) else None
        second: Meta | str = "not found"
        if page_size is not None and MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE:
            if self.file_size >= 2 * page_size:
                second = parse_meta(self._pread(MIN_PAGE_SIZE, page_size))
        else:
            # meta 0 is damaged: look for meta 1 where each plausible page size would put it
            size = MIN_PAGE_SIZE * 2
            while size <= MAX_PAGE_SIZE and self.file_size >= 2 * size:
                second = parse_meta(self._pread(MIN_PAGE_SIZE, size))
                if isinstance(second, Meta) and second.page_size == size:
                    break
                size <<= 1
        valid = [m for m in (first, second) if isinstance(m, Meta)]
        if not valid:
            raise SnapshotInvalid(
                f"not an etcd snapshot: no valid bbolt meta page (meta 0: {first}; "
                f"meta 1: {second})"
            )
        meta = max(valid, key=lambda m: m.txid)
        if not MIN_PAGE_SIZE <= meta.page_size <= MAX_PAGE_SIZE or meta.page_size & (
            meta.page_size - 1
        ):
            raise SnapshotInvalid(f"not a database: implausible page size {meta.page_size}")
        return meta

    def _page(self, pgid: int) -> tuple[int, int, memoryview]:
        """Flags, element count and the bytes of a page with its overflow; checked and marked."""
        if not 2 <= pgid < self.pgid:
            raise SnapshotInvalid(
                f"page {pgid} is referenced but lies outside the database (2..{self.pgid - 1})"
            )
        page_size = self.page_size
        head = self._pread(page_size, pgid * page_size)
        page_id, flags, count, overflow = _PAGE_HEADER.unpack_from(head)
        if page_id != pgid:
            raise SnapshotInvalid(f"page {pgid} carries id {page_id}: the file is damaged")
        if flags not in (BRANCH, LEAF):
            raise SnapshotInvalid(
                f"page {pgid} has flags {flags:#x}, expected a branch or leaf page"
            )
        if pgid + overflow >= self.pgid:
            raise SnapshotInvalid(
                f"page {pgid} overflows by {overflow} pages past the high-water mark {self.pgid}"
            )
        seen = self._seen
        for reached in range(pgid, pgid + overflow + 1):
            if seen[reached]:
                raise SnapshotInvalid(f"page {reached} is referenced twice")
            seen[reached] = _OVERFLOW
        seen[pgid] = _HEAD
        if overflow:
            head += self._pread(overflow * page_size, (pgid + 1) * page_size)
        return flags, count, memoryview(head)

    def root_bucket(self) -> Bucket:
        return Bucket(b"", self.meta.root, None)

    def bucket_of(self, name: bytes, value: memoryview) -> Bucket:
        if len(value) < _BUCKET_HEADER.size:
            raise SnapshotInvalid(f"bucket {name!r} has a {len(value)}-byte header")
        root, _ = _BUCKET_HEADER.unpack_from(value)
        if root == 0:
            return Bucket(name, 0, value[_BUCKET_HEADER.size :])
        return Bucket(name, root, None)

    def items(self, bucket: Bucket) -> Iterator[tuple[bytes, memoryview, int]]:
        """(key, value, flags) of every entry in key order, checking each page on the way."""
        previous: bytes | None = None
        if bucket.inline is not None:
            page = bucket.inline
            if len(page) < _HEADER_SIZE:
                raise SnapshotInvalid(f"inline bucket {bucket.name!r} is truncated")
            _, flags, count, _ = _PAGE_HEADER.unpack_from(page)
            if flags != LEAF:
                raise SnapshotInvalid(f"inline bucket {bucket.name!r} is not a leaf page")
            for key, value, element_flags in _leaf_elements(page, count, f"inline {bucket.name!r}"):
                if previous is not None and key <= previous:
                    raise SnapshotInvalid(f"keys out of order in bucket {bucket.name!r}")
                previous = key
                yield key, value, element_flags
            return
        # depth-first in key order; each frame holds the lower and upper key bounds of a subtree
        stack: list[tuple[int, bytes | None, bytes | None]] = [(bucket.root, None, None)]
        while stack:
            pgid, low, high = stack.pop()
            flags, count, page = self._page(pgid)
            if flags == BRANCH:
                children = _branch_elements(page, count, pgid)
                for index in range(len(children) - 1, -1, -1):
                    key, child = children[index]
                    upper = children[index + 1][0] if index + 1 < len(children) else high
                    if (low is not None and key < low) or (high is not None and key >= high):
                        raise SnapshotInvalid(f"branch page {pgid} has keys out of order")
                    stack.append((child, key, upper))
                continue
            for key, value, element_flags in _leaf_elements(page, count, f"page {pgid}"):
                if (
                    (previous is not None and key <= previous)
                    or (low is not None and key < low)
                    or (high is not None and key >= high)
                ):
                    raise SnapshotInvalid(
                        f"keys out of order at page {pgid} of bucket {bucket.name!r}"
                    )
                previous = key
                yield key, value, element_flags

    def reached_pages(self) -> set[int]:
        """First pages of the branch and leaf pages iterated so far; pages of [2, pgid) never
        reached are free (etcd runs without a freelist)."""
        return {pgid for pgid, seen in enumerate(self._seen) if seen == _HEAD}


def _branch_elements(page: memoryview, count: int, pgid: int) -> list[tuple[bytes, int]]:
    end = _HEADER_SIZE + count * _BRANCH_ELEMENT.size
    if count == 0 or end > len(page):
        raise SnapshotInvalid(f"branch page {pgid} holds {count} elements that do not fit")
    children = []
    previous: bytes | None = None
    for index, (pos, ksize, child) in enumerate(
        _BRANCH_ELEMENT.iter_unpack(page[_HEADER_SIZE:end])
    ):
        start = _HEADER_SIZE + index * _BRANCH_ELEMENT.size + pos
        if start + ksize > len(page):
            raise SnapshotInvalid(f"branch page {pgid}: element {index} runs past the page")
        key = bytes(page[start : start + ksize])
        if previous is not None and key <= previous:
            raise SnapshotInvalid(f"branch page {pgid} has keys out of order")
        previous = key
        children.append((key, child))
    return children


def _leaf_elements(
    page: memoryview, count: int, where: str
) -> Iterator[tuple[bytes, memoryview, int]]:
    end = _HEADER_SIZE + count * _LEAF_ELEMENT.size
    if end > len(page):
        raise SnapshotInvalid(f"{where} holds {count} elements that do not fit")
    size = len(page)
    for index, (flags, pos, ksize, vsize) in enumerate(
        _LEAF_ELEMENT.iter_unpack(page[_HEADER_SIZE:end])
    ):
        start = _HEADER_SIZE + index * _LEAF_ELEMENT.size + pos
        stop = start + ksize + vsize
        if stop > size:
            raise SnapshotInvalid(f"{where}: element {index} runs past the page")
        yield bytes(page[start : start + ksize]), page[start + ksize : stop], flags
