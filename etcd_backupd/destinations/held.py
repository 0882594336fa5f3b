"""The backups the destinations hold, listed the one way every reader needs: each destination in
turn, a cluster's backups only (a destination may be shared), and a destination that cannot be
listed warned about and set apart while the others still count."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import BackupError
from ..manifest import Manifest

log = logging.getLogger(__name__)

UNKNOWN_CLUSTER = "cannot tell this cluster's backups until etcd answers"


@dataclass(frozen=True)
class Listing:
    held: dict[str, list[Manifest]]  # per destination listed: the backups that count, oldest first
    failed: dict[str, str]  # per destination that could not be listed: why


def every_cluster(_: Manifest) -> bool:
    return True


def list_held(
    listers: Mapping[str, Callable[[], Sequence[Manifest]]],
    owns: Callable[[Manifest], bool] | None,
    *,
    context: str = "",
    warn: bool = True,
) -> Listing:
    """List each destination (name -> its manifests) and keep the backups `owns` accepts.

    `owns` None means whose backups are whose is not known yet: no destination is listed, as
    counting another cluster's backups would hide a stale one. `warn` False leaves reporting a
    failure to the caller; `context` prefixes the warning."""
    held: dict[str, list[Manifest]] = {}
    failed: dict[str, str] = {}
    for name, manifests in listers.items():
        try:
            if owns is None:
                raise BackupError(UNKNOWN_CLUSTER)
            held[name] = [m for m in manifests() if owns(m)]
        except BackupError as exc:
            if warn:
                log.warning("%scannot list destination %s: %s", context, name, exc)
            failed[name] = str(exc)
    return Listing(held, failed)
