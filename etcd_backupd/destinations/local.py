"""A directory on a local or mounted filesystem."""

from __future__ import annotations

import errno
import logging
import os
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from ..compression import SUFFIXES, compress_file
from ..config import LocalDestination as LocalConfig
from ..errors import DestinationBusy, DestinationError
from ..fsutil import (
    atomic_write_bytes,
    create_new,
    fsync_dir,
    make_private_dir,
    part_path,
    part_target,
    remove_stale_parts,
)
from ..manifest import (
    MANIFEST_SUFFIX,
    Manifest,
    manifest_name,
    parse_snapshot_name,
    snapshot_of_manifest,
)
from .base import SpooledSnapshot, StoredItem, pair

log = logging.getLogger(__name__)
_COPY_BLOCK = 8 * 1024 * 1024


def _ours(name: str) -> bool:
    """Whether a file name is one this tool makes: a snapshot or its manifest."""
    return parse_snapshot_name(name) is not None or snapshot_of_manifest(name) is not None


class LocalDirectory:
    def __init__(self, config: LocalConfig) -> None:
        self.name = config.name
        self.path = config.path
        self.compression = config.compression

    def error(self, action: str, exc: OSError) -> DestinationError:
        reason = exc.strerror or str(exc)
        hint = {
            errno.ENOSPC: "free space or point the destination elsewhere",
            errno.EACCES: "give the service user write access to the directory",
            errno.EROFS: "the filesystem is mounted read-only",
            errno.ENOTDIR: "the destination path must be a directory",
        }.get(exc.errno or 0, "")
        suffix = f"; {hint}" if hint else ""
        return DestinationError(
            f"destination {self.name!r} ({self.path}): cannot {action}: {reason}{suffix}"
        )

    def taken(self, path: Path) -> DestinationBusy:
        return DestinationBusy(
            f"destination {self.name!r}: {path} already exists, stored by another run of the "
            "same second; not overwriting a backup"
        )

    def _ensure_directory(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise DestinationError(
                f"destination {self.name!r}: {self.path} exists and is not a directory"
            )
        try:
            make_private_dir(self.path)
        except OSError as exc:
            raise self.error("create the directory", exc) from exc

    def spool_dir(self) -> Path | None:
        self._ensure_directory()
        return self.path

    def identity(self) -> str:
        return str(self.path.resolve())

    def begin(self, snapshot: str) -> _LocalUpload:
        self._ensure_directory()
        stored = snapshot + SUFFIXES[self.compression]
        for taken in (stored, manifest_name(stored)):
            if (self.path / taken).exists():
                raise self.taken(self.path / taken)
        return _LocalUpload(self, self.path / stored)

    def manifests(self) -> list[Manifest]:
        if not self.path.is_dir():
            return []
        manifests: list[Manifest] = []
        for candidate in sorted(self.path.glob("*" + MANIFEST_SUFFIX)):
            try:
                manifest = Manifest.from_json(candidate.read_bytes())
            except (OSError, ValidationError) as exc:
                log.warning(
                    "destination %s: skipping unreadable manifest %s: %s",
                    self.name,
                    candidate,
                    str(exc).splitlines()[0],
                )
                continue
            if not (self.path / manifest.snapshot).is_file():
                log.warning(
                    "destination %s: manifest %s has no snapshot beside it",
                    self.name,
                    candidate.name,
                )
                continue
            manifests.append(manifest)
        manifests.sort(key=lambda m: (m.created, m.snapshot))
        return manifests

    def snapshots(self) -> list[StoredItem]:
        return [item for item in self.inventory() if item.has_snapshot]

    def inventory(self) -> list[StoredItem]:
        if not self.path.is_dir():
            return []
        snapshots: set[str] = set()
        manifests: set[str] = set()
        for entry in os.scandir(self.path):
            if parse_snapshot_name(entry.name):
                snapshots.add(entry.name)
            elif (owner := snapshot_of_manifest(entry.name)) is not None:
                manifests.add(owner)
        return pair(snapshots, manifests)

    def fetch(self, snapshot: str, target: Path) -> Path:
        source = self.path / snapshot
        try:
            # stored files are never rewritten, so a link is as good as a copy, and instant
            os.link(source, target)
            return target
        except OSError:
            pass
        try:
            with source.open("rb") as src, target.open("wb") as dst:
                while block := src.read(_COPY_BLOCK):
                    dst.write(block)
        except OSError as exc:
            raise self.error(f"read {snapshot}", exc) from exc
        return target

    def delete(self, snapshots: list[str]) -> None:
        for snapshot in snapshots:
            try:
                # the manifest goes first: a snapshot without one is never mistaken for a backup
                (self.path / manifest_name(snapshot)).unlink(missing_ok=True)
                (self.path / snapshot).unlink(missing_ok=True)
            except OSError as exc:
                raise self.error(f"delete {snapshot}", exc) from exc
        if snapshots:
            fsync_dir(self.path)

    def in_progress(self, since: datetime) -> bool:
        if not self.path.is_dir():
            return False
        for entry in os.scandir(self.path):
            final = part_target(entry.name)
            parsed = parse_snapshot_name(final) if final is not None else None
            if parsed is not None and parsed[1] >= since:
                return True
        return False

    def housekeeping(self, now: datetime) -> list[str]:
        try:
            return remove_stale_parts(self.path, now, _ours)
        except OSError as exc:
            raise self.error("remove files left by interrupted runs", exc) from exc


class _LocalUpload:
    """Stores from the spooled file at commit: a hard link when it shares the filesystem."""

    streams = False

    def __init__(self, destination: LocalDirectory, final: Path) -> None:
        self._destination = destination
        self._final = final
        # only a file this upload put in place is ever removed: never another run's backup
        self._placed = False

    def write(self, chunk: bytes) -> None:
        """The spooled file is complete at commit; nothing to do while it streams."""

    def commit(self, spooled: SpooledSnapshot, manifest: Manifest) -> Manifest:
        destination = self._destination
        try:
            self._place(spooled.path)
        except FileExistsError as exc:
            raise destination.taken(self._final) from exc
        except OSError as exc:
            self.abort()
            raise destination.error(f"store {self._final.name}", exc) from exc
        stored = manifest.model_copy(
            update={
                "snapshot": self._final.name,
                "stored_size": self._final.stat().st_size,
                "compression": destination.compression,
            }
        )
        try:
            atomic_write_bytes(
                destination.path / manifest_name(self._final.name),
                stored.to_json().encode(),
                replace=False,
            )
        except OSError as exc:
            # without its manifest the snapshot is not a backup: do not leave it looking like one
            self.abort()
            raise destination.error(f"write the manifest of {self._final.name}", exc) from exc
        self._placed = False  # a backup now: nothing to undo
        log.info(
            "destination %s: stored %s (%d bytes)",
            destination.name,
            self._final,
            stored.stored_size,
        )
        return stored

    def abort(self) -> None:
        if not self._placed:
            return
        self._placed = False
        try:
            self._final.unlink(missing_ok=True)
        except OSError as exc:
            log.warning(
                "destination %s: could not remove %s after the failure: %s",
                self._destination.name,
                self._final,
                exc.strerror,
            )

    def _place(self, source: Path) -> None:
        """Link the file into place; an existing file of that name is never replaced."""
        if self._destination.compression == "none":
            try:
                os.link(source, self._final)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
            else:
                self._placed = True
                # a no-op when the spool file was synced already; it may come from scratch
                fd = os.open(self._final, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                fsync_dir(self._final.parent)
                return
        part = part_path(self._final)
        with os.fdopen(create_new(part), "wb") as out:
            try:
                compress_file(source, out, self._destination.compression)
                out.flush()
                os.fsync(out.fileno())
                os.link(part, self._final)
                self._placed = True
            finally:
                part.unlink(missing_ok=True)
        fsync_dir(self._final.parent)
