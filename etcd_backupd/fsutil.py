"""Durable file operations: what is renamed into place has reached the disk first."""

from __future__ import annotations

import errno
import os
from datetime import datetime, timedelta
from pathlib import Path

PART_SUFFIX = ".part"
# A .part file untouched this long belongs to a run that was killed; a live stream writes to its
# file every few milliseconds and gives up after etcd.stall_timeout.
STALE_PART_AGE = timedelta(hours=1)
# Backups hold every Secret of the cluster: readable by the owner only.
FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dir(path: Path) -> None:
    """Create `path` and its missing parents, each mode 0700 whatever the umask (mkdir's
    `parents=True` gives the parents the umask's default, 0777 under umask 000). A directory
    that exists already keeps its mode: loosening or tightening it is the operator's call."""
    missing = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        # the umask can only take bits away: 0700 may have come out as less
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, DIR_MODE)
        finally:
            os.close(fd)
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file written through another descriptor: fsync acts on the file, not the fd."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to <path>.part, fsync, rename over path, fsync the directory."""
    part = path.with_name(path.name + PART_SUFFIX)
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
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


def remove_stale_parts(directory: Path, now: datetime) -> list[str]:
    """Delete the .part files interrupted runs left in a directory; return their names."""
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    cutoff = (now - STALE_PART_AGE).timestamp()
    for part in directory.glob("*" + PART_SUFFIX):
        try:
            if part.stat().st_mtime < cutoff:
                part.unlink()
                removed.append(part.name)
        except FileNotFoundError:
            continue
    return removed
