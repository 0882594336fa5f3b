"""Runs of the tool that write into the same destination take turns: an flock per destination
in state_dir, held from a cycle's housekeeping to its pruning. A timer and a CronJob retried
beside it, or a daemon and a manual `once`, never interleave in one place."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .clock import SYSTEM_CLOCK, Clock
from .errors import BackupError, DestinationBusy, DestinationError
from .fsutil import FILE_MODE, make_private_dir

if TYPE_CHECKING:
    from .destinations import Destination

log = logging.getLogger(__name__)

LOCK_FOLDER = "locks"


class DestinationLock:
    """Held until released; raises DestinationBusy when another run holds it."""

    def __init__(
        self, state_dir: Path, name: str, identity: str, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        folder = state_dir / LOCK_FOLDER
        # named by where the destination keeps its data, so two configs naming one place agree
        path = folder / (hashlib.sha256(identity.encode()).hexdigest()[:20] + ".lock")
        try:
            make_private_dir(folder)
            self._fd = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
            )
        except OSError as exc:
            raise DestinationError(
                f"state_dir: cannot create the lock file {path} for destination {name!r}: "
                f"{exc.strerror}"
            ) from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise DestinationError(f"state_dir: cannot lock {path}: {exc.strerror}") from exc
            raise DestinationBusy(
                f"destination {name!r} ({identity}): another run ({holder}) is backing up into "
                "it; this run leaves it to that one"
            ) from None
        stamp = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        me = f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n"
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, me.encode(), 0)
        except OSError:
            pass  # who holds it is a courtesy to the run that finds it busy

    def release(self) -> None:
        os.close(self._fd)


class Claims:
    """The destinations this run holds against other runs, and the ones it leaves alone."""

    def __init__(self, state_dir: Path, clock: Clock = SYSTEM_CLOCK) -> None:
        self._state_dir = state_dir
        self._clock = clock
        self.held: list[DestinationLock] = []
        self.busy: dict[str, str] = {}
        self.failures: dict[str, str] = {}

    def take(self, targets: Sequence[Destination]) -> list[Destination]:
        usable = []
        for target in targets:
            try:
                self.held.append(
                    DestinationLock(self._state_dir, target.name, target.identity(), self._clock)
                )
            except DestinationBusy as exc:
                log.warning("%s", exc)
                self.busy[target.name] = str(exc)
                continue
            except BackupError as exc:
                log.error("destination %s failed: %s", target.name, exc)
                self.failures[target.name] = str(exc)
                continue
            usable.append(target)
        if not usable and self.busy:
            raise DestinationBusy(
                "another run is backing up to every destination; this run takes no snapshot: "
                + "; ".join(self.busy.values())
            )
        if not usable:
            raise DestinationError(
                "no destination can take the snapshot: " + "; ".join(self.failures.values())
            )
        return usable

    def release(self) -> None:
        while self.held:
            self.held.pop().release()
