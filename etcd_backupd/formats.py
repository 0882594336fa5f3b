"""The stored formats of a snapshot, in one table: each is the snapshot as etcd wrote it, optionally
compressed, then optionally encrypted with age, and named `<name>.db[.zst|.gz][.age]`.

Naming (the manifest's name pattern, restore's base names), verification's account of a file that
is not a snapshot, and reading a stored file back (compression.decompress_file) all take suffixes
and magic bytes from here, so a new layer is added in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Compression = Literal["none", "zstd", "gzip"]
SNAPSHOT_SUFFIX = ".db"


@dataclass(frozen=True)
class Layer:
    """One transformation of the stream: its name, the suffix it adds to a stored name, the
    bytes every stream it writes starts with, and for an operator what such a stream is and
    what undoes it."""

    name: str
    suffix: str
    magic: bytes
    description: str
    undo: str


ZSTD = Layer("zstd", ".zst", b"\x28\xb5\x2f\xfd", "zstd-compressed data", "decompress")
GZIP = Layer("gzip", ".gz", b"\x1f\x8b", "gzip-compressed data", "decompress")
# age's binary header line (age-encryption.org/v1, "Header"); we never write the armored form
AGE = Layer("age", ".age", b"age-encryption.org/v1\n", "age-encrypted data", "decrypt")

COMPRESSIONS: dict[Compression, Layer | None] = {"none": None, "zstd": ZSTD, "gzip": GZIP}
# the longest magic: how many leading bytes decide which layer a stream is
MAGIC_SPAN = max(len(layer.magic) for layer in (ZSTD, GZIP, AGE))


@dataclass(frozen=True)
class StoredFormat:
    compression: Compression = "none"
    encrypted: bool = False

    @property
    def layers(self) -> tuple[Layer, ...]:
        """Applied in this order when writing (compress, then encrypt), undone in reverse."""
        compressed = COMPRESSIONS[self.compression]
        return (*((compressed,) if compressed else ()), *((AGE,) if self.encrypted else ()))

    @property
    def suffix(self) -> str:
        """What follows `.db` in a stored name."""
        return "".join(layer.suffix for layer in self.layers)

    @property
    def name(self) -> str:
        """As a manifest records it: "none", "zstd", "gzip+age"."""
        return "+".join(layer.name for layer in self.layers) or "none"


FORMATS = tuple(
    StoredFormat(compression, encrypted)
    for encrypted in (False, True)
    for compression in COMPRESSIONS
)
# every stored suffix after `.db`, longest first so a match never stops at a shorter one
STORED_SUFFIX_PATTERN = (
    "(?:"
    + "|".join(
        re.escape(f.suffix) for f in sorted(FORMATS, key=lambda f: -len(f.suffix)) if f.suffix
    )
    + ")?"
)
_STORED_NAME = re.compile(
    rf"^(?P<base>.*{re.escape(SNAPSHOT_SUFFIX)})(?P<suffix>{STORED_SUFFIX_PATTERN})$"
)


def stored_name(snapshot: str, stored: StoredFormat) -> str:
    """The name a snapshot called `snapshot` (ending in .db) is stored under."""
    return snapshot + stored.suffix


def format_of_name(name: str) -> StoredFormat | None:
    """The format a stored name says it holds, or None for a name without `.db`."""
    match = _STORED_NAME.match(name)
    if match is None:
        return None
    (found,) = [f for f in FORMATS if f.suffix == match["suffix"]]
    return found


def base_name(name: str) -> str:
    """The snapshot's name as etcd wrote it, whatever format it is stored in."""
    match = _STORED_NAME.match(name)
    return match["base"] if match else name


def outer_layer(head: bytes, among: tuple[Layer, ...] = (AGE, ZSTD, GZIP)) -> Layer | None:
    """The layer a stream starting with `head` was last written with, or None for a stream that
    starts with none of their magics (a plain snapshot, or not a snapshot at all)."""
    for layer in among:
        if head.startswith(layer.magic):
            return layer
    return None
