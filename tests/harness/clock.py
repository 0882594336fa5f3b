"""Clocks for tests: a run standing at a chosen instant, or one whose durations a test steps."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class FixedClock:
    """Stands at `moment` (runs that read the same second); durations and deadlines still run
    on the real monotonic clock, so nothing waits forever."""

    moment: datetime

    def now(self) -> datetime:
        return self.moment

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass
class SteppedClock:
    """Moves only when told: `advance` adds seconds to both readings."""

    moment: datetime
    seconds: float = 0.0

    def now(self) -> datetime:
        return self.moment

    def monotonic(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.seconds += seconds
        self.moment += timedelta(seconds=seconds)
