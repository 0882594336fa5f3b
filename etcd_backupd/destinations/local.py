"""A directory on a local or mounted filesystem."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from ..compression import writing
from ..config_destinations import LocalDestination as LocalConfig
from ..errors import DestinationBusy, DestinationError, SnapshotInvalid
from ..formats import stored_name
from ..fsutil import (
    atomic_write_bytes,
    create_new,
    fsync_dir,
    fsync_file,
    make_private_dir,
    part_path,
    part_target,
    remove_stale_parts,
)
from ..manifest import (
    MANIFEST_MAX_BYTES,
    Manifest,
    ManifestRejected,
    manifest_name,
    parse_snapshot_name,
    read_manifest,
    snapshot_of_manifest,
)
from ..stages import Pipeline
from .base import SpooledSnapshot, StoredItem, check_stored, file_sha256, pair

log = logging.getLogger(__name__)
_COPY_BLOCK = 8 * 1024 * 1024


def _ours(name: str) -> bool:
    """Whether a file name is one this tool makes: a snapshot or its manifest."""
    return parse_snapshot_name(name) is not None or snapshot_of_manifest(name) is not None


class LocalDirectory:
    def __init__(self, config: LocalConfig) -> None:
        self.name = config.name
        self.path = config.path
        self.format = config.stored_format
        self.recipients = config.encryption.public_keys() if config.encryption else []
        self.stages = writing(self.format, config.encryption.parsed() if config.encryption else ())

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
        """Here, unless what is stored here is encrypted: then no plaintext may rest here, even
        for a moment, and the snapshot is spooled under state_dir."""
        if self.format.encrypted:
            return None
        self._ensure_directory()
        return self.path

    def keeps_spool(self) -> bool:
        return not self.format.layers

    def identity(self) -> str:
        return str(self.path.resolve())

    def begin(self, snapshot: str) -> _LocalUpload:
        self._ensure_directory()
        stored = stored_name(snapshot, self.format)
        for taken in (stored, manifest_name(stored)):
            if (self.path / taken).exists():
                raise self.taken(self.path / taken)
        try:
            return _LocalUpload(self, self.path / stored)
        except FileExistsError as exc:
            raise self.taken(part_path(self.path / stored)) from exc
        except OSError as exc:
            raise self.error(f"start writing {stored}", exc) from exc

    def manifests(self, inventory: Sequence[StoredItem] | None = None) -> list[Manifest]:
        manifests: list[Manifest] = []
        for item in self.inventory() if inventory is None else inventory:
            if not item.has_manifest:
                continue
            stored_as = manifest_name(item.snapshot)
            try:
                manifest = read_manifest(_read_regular(self.path / stored_as), item.snapshot)
            except (OSError, ManifestRejected) as exc:
                log.warning(
                    "destination %s: ignoring manifest %s: %s", self.name, stored_as, _why(exc)
                )
                continue
            if not _is_regular(self.path / item.snapshot):
                log.warning(
                    "destination %s: ignoring manifest %s: no regular file %s beside it",
                    self.name,
                    stored_as,
                    item.snapshot,
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
            if entry.is_dir(follow_symlinks=False):
                continue  # whoever made it, not this tool: never listed, never deleted
            if parse_snapshot_name(entry.name):
                snapshots.add(entry.name)
            elif (owner := snapshot_of_manifest(entry.name)) is not None:
                manifests.add(owner)
        return pair(snapshots, manifests)

    def fetch(self, snapshot: str, target: Path, *, stored_sha256: str | None = None) -> Path:
        if parse_snapshot_name(snapshot) is None:
            raise DestinationError(
                f"destination {self.name!r}: {snapshot!r} is not a snapshot name"
            )
        found = self._link_or_copy(snapshot, target, hashed=stored_sha256 is not None)
        if found is not None and stored_sha256 is not None:
            try:
                check_stored(self.name, snapshot, found, stored_sha256)
            except SnapshotInvalid:
                target.unlink()
                raise
        return target

    def _link_or_copy(self, snapshot: str, target: Path, *, hashed: bool) -> str | None:
        """Put the stored file at `target`; its SHA-256, read once, when `hashed`."""
        source = self.path / snapshot
        try:
            # stored files are never rewritten, so a link is as good as a copy, and instant; a
            # symbolic link is linked as itself, never followed, and then refused below
            os.link(source, target, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise self.error(f"fetch {snapshot} to {target}", exc) from exc
        else:
            if _is_regular(target):
                return self._hash_linked(snapshot, target) if hashed else None
            target.unlink()
            raise DestinationError(
                f"destination {self.name!r}: {snapshot} is not a regular file; not fetching it"
            )
        try:
            src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise self.error(f"read {snapshot}", exc) from exc
        try:
            if not stat.S_ISREG(os.fstat(src).st_mode):
                raise DestinationError(
                    f"destination {self.name!r}: {snapshot} is not a regular file; not fetching it"
                )
            digest = hashlib.sha256() if hashed else None
            with (
                os.fdopen(os.dup(src), "rb") as reader,
                os.fdopen(create_new(target), "wb") as writer,
            ):
                while block := reader.read(_COPY_BLOCK):
                    if digest is not None:
                        digest.update(block)
                    writer.write(block)
        except OSError as exc:
            raise self.error(f"fetch {snapshot} to {target}", exc) from exc
        finally:
            os.close(src)
        return digest.hexdigest() if digest is not None else None

    def _hash_linked(self, snapshot: str, target: Path) -> str:
        try:
            return file_sha256(target)
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise self.error(f"read {snapshot}", exc) from exc

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

    def deletion_note(self) -> str | None:
        """A deleted file is gone."""
        return None

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


def _why(exc: OSError | ManifestRejected) -> str:
    if isinstance(exc, ManifestRejected):
        return str(exc)
    if exc.errno == errno.ELOOP:
        return "a symbolic link; manifests are read from regular files only"
    return exc.strerror or str(exc)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _read_regular(path: Path) -> bytes:
    """The bytes of a small regular file, never following a link, never blocking on a FIFO or
    device, never reading more than a manifest may hold."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ManifestRejected(None, "not a regular file")
        if info.st_size > MANIFEST_MAX_BYTES:
            raise ManifestRejected(None, f"larger than {MANIFEST_MAX_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as reader:
            return reader.read(MANIFEST_MAX_BYTES + 1)
    finally:
        os.close(fd)


class _LocalUpload:
    """Stores a snapshot kept as etcd wrote it from the spooled file at commit, by a hard link
    when it shares the filesystem; a compressed or encrypted one through the format's stages into
    a part file while the snapshot streams, so that their cost hides behind the stream, linked
    into place at commit."""

    def __init__(self, destination: LocalDirectory, final: Path) -> None:
        self._destination = destination
        self._final = final
        # only a file this upload put in place is ever removed: never another run's backup
        self._placed = False
        self.streams = bool(destination.format.layers)
        self._part = part_path(final)
        self._out: BinaryIO | None = None
        self._pipeline: Pipeline | None = None
        if self.streams:
            self._out = os.fdopen(create_new(self._part), "wb")
            self._pipeline = Pipeline(destination.stages, self._out)

    def write(self, chunk: bytes) -> None:
        """Through the stages into the part file; a snapshot stored as it is waits for commit."""
        if self._pipeline is not None:
            try:
                self._pipeline.write(chunk)
            except OSError as exc:
                # a full disk: worded as the same failure met at commit, and this destination's
                # alone, never the run's
                raise self._destination.error(f"store {self._final.name}", exc) from exc

    def commit(self, spooled: SpooledSnapshot, manifest: Manifest) -> Manifest:
        destination = self._destination
        try:
            stored_sha256 = self._place(spooled)
        except FileExistsError as exc:
            raise destination.taken(self._final) from exc
        except OSError as exc:
            self.abort()
            raise destination.error(f"store {self._final.name}", exc) from exc
        stored = manifest.model_copy(
            update={
                "snapshot": self._final.name,
                "stored_size": self._final.stat().st_size,
                "compression": destination.format.compression,
                "stored_format": destination.format.name,
                "recipients": tuple(destination.recipients),
                "snapshot_sha256": spooled.sha256,
                "stored_sha256": stored_sha256,
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
        self._discard_part()
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

    def _place(self, spooled: SpooledSnapshot) -> str:
        """Put the stored file in place, an existing file of that name never replaced: the
        spool file itself, linked, when stored as it is; else written through the format's
        stages. Return the stored file's SHA-256."""
        if self._pipeline is not None:
            return self._seal_part(self._pipeline)
        source = spooled.path
        if not self._destination.format.layers:
            try:
                os.link(source, self._final)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
            else:
                self._placed = True
                # a no-op when the spool file was synced already; it may come from scratch
                fsync_file(self._final)
                fsync_dir(self._final.parent)
                return spooled.sha256
        part = part_path(self._final)
        with os.fdopen(create_new(part), "wb") as out:
            pipeline = Pipeline(self._destination.stages, out)
            try:
                with source.open("rb") as src:
                    while block := src.read(_COPY_BLOCK):
                        pipeline.write(block)
                pipeline.close()
                out.flush()
                os.fsync(out.fileno())
                os.link(part, self._final)
                self._placed = True
            except BaseException:
                # stops the stages' workers (age's thread) when reading the spool failed
                pipeline.abort()
                raise
            finally:
                part.unlink(missing_ok=True)
        fsync_dir(self._final.parent)
        return pipeline.stored_sha256

    def _seal_part(self, pipeline: Pipeline) -> str:
        """Flush the stages into the part file, make it durable and link it into place."""
        assert self._out is not None
        try:
            pipeline.close()
            self._out.flush()
            os.fsync(self._out.fileno())
            os.link(self._part, self._final)
            self._placed = True
        finally:
            self._discard_part()
        fsync_dir(self._final.parent)
        return pipeline.stored_sha256

    def _discard_part(self) -> None:
        """Stop the stages (age's worker) if still running, close and remove the part file."""
        pipeline, out = self._pipeline, self._out
        self._pipeline = self._out = None
        if pipeline is not None:
            pipeline.abort()
        if out is not None:
            # its bytes are being discarded: a close that fails loses nothing
            with contextlib.suppress(OSError, ValueError):
                out.close()
            self._part.unlink(missing_ok=True)
