"""Durable file operations: what is renamed into place has reached the disk first."""

from __future__ import annotations

import os
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
