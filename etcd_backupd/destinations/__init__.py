"""Where snapshots are kept. `build` imports a backend only when the config names it."""

from __future__ import annotations

from ..config import DestinationConfig
from .base import Destination, SpooledSnapshot

__all__ = ["Destination", "SpooledSnapshot", "build"]


def build(config: DestinationConfig) -> Destination:
    if config.type == "local":
        from .local import LocalDirectory

        return LocalDirectory(config)
    raise AssertionError(f"unhandled destination type {config.type!r}")
