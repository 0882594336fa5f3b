"""The one interface every destination implements, and the spooled snapshot they are given."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from ..errors import SnapshotInvalid
from ..manifest import Manifest, parse_snapshot_name
from ..snapshot.status import SnapshotStatus


@dataclass(frozen=True)
class SpooledSnapshot:
    """A complete, verified snapshot file waiting on local disk to be shipped."""

    path: Path
    status: SnapshotStatus
    sha256: str  # of the whole file, as etcd wrote it


@dataclass(frozen=True)
class StoredItem:
    """One stored snapshot as a listing sees it, with or without a manifest beside it."""

    snapshot: str
    created: datetime
    has_manifest: bool | None  # None: not looked at (listing snapshots only)
    has_snapshot: bool


def pair(snapshots: set[str], manifests: set[str]) -> list[StoredItem]:
    """Snapshots and manifests matched by name, oldest first; names must be ours."""
    items = []
    for name in snapshots | manifests:
        parsed = parse_snapshot_name(name)
        assert parsed is not None
        items.append(StoredItem(name, parsed[1], name in manifests, name in snapshots))
    return sorted(items, key=lambda item: (item.created, item.snapshot))


def file_sha256(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def check_stored(destination: str, snapshot: str, found: str, stored_sha256: str) -> None:
    """The fetched object is the one its manifest recorded, before anything decrypts or
    decompresses it: another backup's object put in its place decrypts just as well."""
    if found != stored_sha256:
        raise SnapshotInvalid(
            f"backup {snapshot} in destination {destination!r}: the stored object does not match "
            f"its manifest (damaged or replaced): its SHA-256 is {found}, the manifest's "
            f"stored_sha256 {stored_sha256}"
        )


class Upload(Protocol):
    """One snapshot on its way into a destination.

    `write` receives the snapshot bytes while they stream from etcd (a destination that ships from
    the spooled file afterwards may ignore them); nothing becomes visible before `commit`, which
    happens only after verification passed; `abort` removes every trace.
    """

    # whether `write` wants the bytes while they stream; they are then handed over from a
    # thread of the upload's own, so a slow destination never holds up the stream
    streams: bool

    def write(self, chunk: bytes) -> None: ...

    def commit(self, spooled: SpooledSnapshot, manifest: Manifest) -> Manifest: ...

    def abort(self) -> None: ...


class Destination(Protocol):
    """A place snapshots are kept. Implementations never import one another."""

    name: str

    def spool_dir(self) -> Path | None:
        """A local directory where a snapshot may be streamed so that storing it costs no copy."""
        ...

    def keeps_spool(self) -> bool:
        """Whether a snapshot streamed into spool_dir() is itself the file stored here, so it must
        reach the disk; one stored compressed or encrypted is only read, then removed."""
        ...

    def identity(self) -> str:
        """Where the snapshots are kept, however a config names it: runs of the tool that
        write into one place take turns (see runlock)."""
        ...

    def begin(self, snapshot: str) -> Upload:
        """Start storing the snapshot `snapshot` (its uncompressed name)."""
        ...

    def manifests(self, inventory: Sequence[StoredItem] | None = None) -> list[Manifest]:
        """Valid manifests of the stored snapshots, oldest first, without reading the snapshots;
        from `inventory` when the caller listed the destination already."""
        ...

    def snapshots(self) -> list[StoredItem]:
        """The snapshot files or objects, from one listing of names (no manifest is read)."""
        ...

    def inventory(self) -> list[StoredItem]:
        """Every snapshot and every manifest, paired by name, to find orphans."""
        ...

    def fetch(self, snapshot: str, target: Path, *, stored_sha256: str | None = None) -> Path:
        """Copy a stored snapshot to a local file and return its path; with `stored_sha256`
        (its manifest's), raise SnapshotInvalid, leaving no file, unless the copy hashes to it."""
        ...

    def delete(self, snapshots: list[str]) -> None:
        """Remove snapshots and their manifests (manifest first)."""
        ...

    def deletion_note(self) -> str | None:
        """What becomes of deleted data, when it is not simply gone (a versioned bucket keeps
        it readable); raises DestinationError when the store cannot tell."""
        ...

    def in_progress(self, since: datetime) -> bool:
        """Whether a snapshot started at or after `since` is being written (by any host)."""
        ...

    def housekeeping(self, now: datetime) -> list[str]:
        """Remove what interrupted runs left (partial files, incomplete uploads); say what."""
        ...
