"""Several hosts, one backup per fire time: the host whose local member leads takes it; the
others stand by and take it only when, after a grace period, no snapshot of that fire time exists
or is being written in a destination. Read-only: it writes nothing to etcd."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from .config import Config
from .destinations import Destination
from .errors import BackupError
from .etcd import EtcdSource, identify_cluster
from .manifest import Cluster
from .retention import is_future

log = logging.getLogger(__name__)

Role = Literal["active", "standby"]
# how often a standby looks again while a snapshot of the fire time is still being written
_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class Plan:
    role: Role
    reason: str
    destinations: tuple[Destination, ...]  # the ones to back up to now (empty: nothing to do)


def fire_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def local_role(config: Config) -> tuple[Role, str]:
    """Active when coordination is off or the local member is the leader."""
    if not config.coordinated or config.etcd.local_endpoint is None:
        return "active", "coordination is off"
    local = config.etcd.model_copy(update={"endpoints": [config.etcd.local_endpoint]})
    try:
        member = EtcdSource(local).healthy_members()[0]
    except BackupError as exc:
        return "standby", f"the local member does not answer ({exc})"
    if member.is_leader:
        return "active", f"the local member {member.describe()} leads"
    return "standby", f"the local member {member.describe()} follows"


def _covered(destination: Destination, fire: datetime, cluster: Cluster) -> bool:
    """Whether the destination holds a backup of this cluster taken at or after `fire`: another
    cluster's, or one dated in the future, says nothing about this fire time."""
    now = datetime.now(UTC)
    return any(
        cluster.owns(m) and m.created >= fire and not is_future(m.created, now)
        for m in destination.manifests()
    )


def plan(
    config: Config,
    targets: list[Destination],
    fire: datetime,
    stopping: threading.Event,
    max_wait: float | None = None,
) -> Plan:
    """Decide who backs up the fire time `fire`; a standby waits and looks before it acts."""
    role, reason = local_role(config)
    if role == "active":
        return Plan("active", reason, tuple(targets))
    log.info(
        "standby: %s; waiting %.0f s for the snapshot of %s",
        reason,
        config.schedule.standby_grace,
        fire.isoformat(),
    )
    if stopping.wait(config.schedule.standby_grace):
        return Plan("standby", "stopping", ())
    deadline = time.monotonic() + (max_wait if max_wait is not None else 3600.0)
    while time.monotonic() < deadline:
        try:
            busy = [t.name for t in targets if t.in_progress(fire)]
        except BackupError as exc:
            log.warning("standby: cannot tell whether a backup is under way: %s", exc)
            busy = []
        if not busy:
            break
        log.info(
            "standby: a snapshot of %s is being written to %s", fire.isoformat(), ", ".join(busy)
        )
        if stopping.wait(_POLL_SECONDS):
            return Plan("standby", "stopping", ())
    try:
        cluster = identify_cluster(config.etcd)
    except BackupError as exc:
        log.warning("standby: %s", exc)
        return Plan("active", "cannot tell this cluster's backups", tuple(targets))
    missing = []
    for target in targets:
        try:
            if not _covered(target, fire, cluster):
                missing.append(target)
        except BackupError as exc:
            log.warning("standby: cannot list destination %s: %s", target.name, exc)
            missing.append(target)
    if not missing:
        log.info("standby: another host backed up %s", fire.isoformat())
        return Plan("standby", "another host backed up this fire time", ())
    names = ", ".join(t.name for t in missing)
    log.warning(
        "standby: no snapshot of %s in %s after the grace period: taking it",
        fire.isoformat(),
        names,
    )
    return Plan("active", f"no snapshot of this fire time in {names}", tuple(missing))
