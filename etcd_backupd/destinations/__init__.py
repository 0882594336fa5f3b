"""Where snapshots are kept. `build` imports a backend only when the config names it."""

from __future__ import annotations

from ..config_destinations import DestinationConfig
from .base import Destination, SpooledSnapshot, StoredItem, Upload

__all__ = ["Destination", "SpooledSnapshot", "StoredItem", "Upload", "build"]


def build(config: DestinationConfig) -> Destination:
    if config.type == "local":
        from .local import LocalDirectory

        return LocalDirectory(config)
    from .s3 import S3Bucket

    return S3Bucket(config)
