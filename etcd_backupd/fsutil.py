"""Durable file operations: what is renamed into place has reached the disk first."""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from .errors import DestinationError

PART_SUFFIX = ".part"
# <final name>.<12 hex digits>.part: unique per file created, so runs that start in the same
# second never share, truncate or remove each other's files
_PART_RE = re.compile(r"^(?P<final>.+?)(?:\.[0-9a-f]{12})?\.part$")
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


def part_path(final: Path) -> Path:
    """A name no other file has, for a file that becomes `final` once complete."""
    return final.with_name(f"{final.name}.{secrets.token_hex(6)}{PART_SUFFIX}")


def part_target(name: str) -> str | None:
    """The final name a .part file of ours is for (also the <final>.part of earlier versions)."""
    match = _PART_RE.match(name)
    return match["final"] if match else None


def create_new(path: Path) -> int:
    """Open a file that must not exist yet: never a file or a symlink someone else put there."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)


def atomic_write_bytes(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write to a fresh .part file, fsync, move it to `path`, fsync the directory. With
    replace=False an existing `path` is left alone and FileExistsError raised."""
    part = part_path(path)
    fd = create_new(part)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(part, path)
        else:
            os.link(part, path)
    finally:
        part.unlink(missing_ok=True)
    fsync_dir(path.parent)


def remove_stale_parts(directory: Path, now: datetime, ours: Callable[[str], bool]) -> list[str]:
    """Delete the .part files interrupted runs of this tool left in a directory: regular files
    whose final name `ours` accepts, untouched for STALE_PART_AGE. Return their names."""
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    cutoff = (now - STALE_PART_AGE).timestamp()
    for entry in os.scandir(directory):
        final = part_target(entry.name)
        if final is None or not ours(final):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(entry.name)
        except FileNotFoundError:
            continue
    return removed


def inside(directory: Path, name: str) -> Path:
    """`directory / name` for a name read from a destination, refused unless it stays a plain
    entry of `directory`: no separators, no `..`, no way out once resolved."""
    path = directory / name
    if name in ("", ".", "..") or Path(name).name != name or os.sep in name:
        raise DestinationError(f"{name!r} is not a plain file name; not writing it in {directory}")
    if path.resolve().parent != directory.resolve():
        raise DestinationError(f"{name!r} leads out of {directory}; not writing it")
    return path
