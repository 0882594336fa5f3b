"""One job at a time on a shared slot, for jobs started from several threads: a job that must
not queue up (a backup fire time) is skipped while another runs, one that may wait (a drill) takes
the next turn, and whoever stops the process waits for the running job, up to a deadline."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .clock import SYSTEM_CLOCK, Clock

# how often a waiter looks again: a turn ended without a notification still ends the wait
_POLL_SECONDS = 1.0


class OneAtATime:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._idle = threading.Condition()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    @contextmanager
    def turn(self, *, wait: bool) -> Iterator[bool]:
        """Hold the slot for the block; with `wait` False, yield False at once when another
        job holds it (the block then runs without the slot and should do nothing)."""
        if not self._lock.acquire(blocking=wait):
            yield False
            return
        try:
            yield True
        finally:
            self._lock.release()
            with self._idle:
                self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job holds the slot, for at most `timeout` seconds (None: for as long
        as it takes); whether it is free."""
        deadline = None if timeout is None else self._clock.monotonic() + timeout
        with self._idle:
            while self._lock.locked() and (deadline is None or self._clock.monotonic() < deadline):
                self._idle.wait(timeout=_POLL_SECONDS)
        return not self._lock.locked()
