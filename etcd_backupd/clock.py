"""The one source of time: an aware "now" for names, ages and schedules, and a monotonic reading
for durations and deadlines. Everything that reads time takes a Clock, so a test can stand a run at
any instant (a same-second collision, a skewed host) without touching the process's clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never steps back: for durations and deadlines only."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()


@dataclass
class StageTimer:
    """Seconds spent per named stage of a run, and which stage is running (for failure reports)."""

    clock: Clock = SYSTEM_CLOCK
    seconds: dict[str, float] = field(default_factory=dict)
    current: str = ""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.current = name
        began = self.clock.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + self.clock.monotonic() - began
