"""Durable file operations: what is renamed into place has reached the disk first."""

from __future__ import annotations

import os
import time
from pathlib import Path

PART_SUFFIX = ".part"
# Backups hold every Secret of the cluster: readable by the owner only.
FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to <path>.part, fsync, rename over path, fsync the directory."""
    part = path.with_name(path.name + PART_SUFFIX)
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_stale_parts(directory: Path, older_than: float, now: float | None = None) -> list[Path]:
    """Delete *.part files a killed run left behind; a file written to recently may be live."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        candidates = list(directory.glob("*" + PART_SUFFIX))
    except OSError:
        return removed
    for candidate in candidates:
        try:
            if now - candidate.stat().st_mtime > older_than:
                candidate.unlink()
                removed.append(candidate)
        except FileNotFoundError:
            continue
    return removed
