"""The one interface every destination implements, and the spooled snapshot they are given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..manifest import Manifest
from ..snapshot.status import SnapshotStatus


@dataclass(frozen=True)
class SpooledSnapshot:
    """A complete, verified snapshot file waiting on local disk to be shipped."""

    path: Path
    status: SnapshotStatus


class Destination(Protocol):
    """A place snapshots are kept. Implementations never import one another."""

    name: str

    def spool_dir(self) -> Path | None:
        """A local directory where a snapshot may be streamed so that storing it costs no copy."""
        ...

    def store(self, spooled: SpooledSnapshot, manifest: Manifest) -> Manifest:
        """Keep the snapshot, then its manifest (the commit marker); return the manifest written.

        On failure nothing may remain visible under the snapshot's final name.
        """
        ...

    def list(self) -> list[Manifest]:
        """Manifests of the stored snapshots, oldest first, without reading the snapshots."""
        ...

    def fetch(self, snapshot: str, target: Path) -> Path:
        """Copy a stored snapshot to a local file and return its path."""
        ...

    def delete(self, snapshots: list[str]) -> None:
        """Remove snapshots and their manifests."""
        ...
