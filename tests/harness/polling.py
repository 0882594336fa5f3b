"""Waiting for something another process does, always against a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.1,
    message: str | Callable[[], str] = "",
) -> T:
    """Call `condition` every `interval` seconds until it returns something true, and return
    that; after `timeout` seconds fail the test with `message` (called then, so that it can show
    a log as it is at the end). The condition may itself assert, to give up early: a daemon
    that died will never log what is awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            shown = message() if callable(message) else message
            raise AssertionError(
                f"not within {timeout} s: {shown}" if shown else f"not within {timeout} s"
            )
        time.sleep(interval)
