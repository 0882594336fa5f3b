"""A directory on a local or mounted filesystem."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from pydantic import ValidationError

from ..config import LocalDestination as LocalConfig
from ..errors import DestinationError
from ..fsutil import DIR_MODE, FILE_MODE, PART_SUFFIX, atomic_write_bytes, fsync_dir
from ..manifest import MANIFEST_SUFFIX, Manifest, manifest_name
from .base import SpooledSnapshot

log = logging.getLogger(__name__)
_COPY_BLOCK = 8 * 1024 * 1024


class LocalDirectory:
    def __init__(self, config: LocalConfig) -> None:
        self.name = config.name
        self.path = config.path

    def _fail(self, action: str, exc: OSError) -> DestinationError:
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

    def _ensure_directory(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise DestinationError(
                f"destination {self.name!r}: {self.path} exists and is not a directory"
            )
        try:
            self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise self._fail("create the directory", exc) from exc

    def spool_dir(self) -> Path | None:
        self._ensure_directory()
        return self.path

    def store(self, spooled: SpooledSnapshot, manifest: Manifest) -> Manifest:
        self._ensure_directory()
        final = self.path / manifest.snapshot
        if final.exists() or (self.path / manifest_name(manifest.snapshot)).exists():
            raise DestinationError(
                f"destination {self.name!r}: {final} already exists; not overwriting a backup"
            )
        stored = manifest.model_copy(update={"stored_size": spooled.path.stat().st_size})
        try:
            self._place(spooled.path, final)
        except OSError as exc:
            final.unlink(missing_ok=True)
            raise self._fail(f"store {final.name}", exc) from exc
        try:
            atomic_write_bytes(
                self.path / manifest_name(manifest.snapshot), stored.to_json().encode()
            )
        except OSError as exc:
            # without its manifest the snapshot is not a backup: do not leave it looking like one
            final.unlink(missing_ok=True)
            raise self._fail(f"write the manifest of {final.name}", exc) from exc
        log.info("destination %s: stored %s (%d bytes)", self.name, final, stored.stored_size)
        return stored

    def _place(self, source: Path, final: Path) -> None:
        """Hard-link the spooled file when it sits on this filesystem, else copy it durably."""
        try:
            os.link(source, final)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
        else:
            fsync_dir(self.path)
            return
        part = final.with_name(final.name + PART_SUFFIX)
        try:
            with source.open("rb") as src:
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
                with os.fdopen(fd, "wb") as dst:
                    shutil.copyfileobj(src, dst, _COPY_BLOCK)
                    dst.flush()
                    os.fsync(dst.fileno())
            os.rename(part, final)
        finally:
            part.unlink(missing_ok=True)
        fsync_dir(self.path)

    def list(self) -> list[Manifest]:
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

    def fetch(self, snapshot: str, target: Path) -> Path:
        source = self.path / snapshot
        try:
            shutil.copyfile(source, target)
        except OSError as exc:
            raise self._fail(f"read {snapshot}", exc) from exc
        return target

    def delete(self, snapshots: list[str]) -> None:
        for snapshot in snapshots:
            try:
                # the manifest goes first: a snapshot without one is never mistaken for a backup
                (self.path / manifest_name(snapshot)).unlink(missing_ok=True)
                (self.path / snapshot).unlink(missing_ok=True)
            except OSError as exc:
                raise self._fail(f"delete {snapshot}", exc) from exc
        fsync_dir(self.path)
