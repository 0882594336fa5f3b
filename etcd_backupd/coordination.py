"""Several hosts, one backup per fire time: the host whose local member leads takes it; the
others stand by and take it only when, after a grace period, no snapshot of that fire time exists
or is being written in a destination. Standbys act in turn, by rank: the live follower with the
lowest member ID after one grace period, the next after two, and so on, so two standbys never
race for the same fire time. Read-only: it writes nothing to etcd."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from .clock import SYSTEM_CLOCK, Clock
from .config import Config
from .config_destinations import S3Destination
from .destinations import Destination
from .destinations.held import list_held
from .errors import BackupError
from .etcd import EtcdSource, MemberStatus, identify_cluster
from .fsutil import STALE_PART_AGE
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


def local_role(config: Config) -> tuple[Role, str, int | None]:
    """Active when coordination is off or the local member is the leader; with the local
    member's ID when it answered."""
    if not config.coordinated or config.etcd.local_endpoint is None:
        return "active", "coordination is off", None
    local = config.etcd.model_copy(update={"endpoints": [config.etcd.local_endpoint]})
    try:
        member = EtcdSource(local).healthy_members()[0]
    except BackupError as exc:
        return "standby", f"the local member does not answer ({exc})", None
    if member.is_leader:
        return "active", f"the local member {member.describe()} leads", member.member_id
    return "standby", f"the local member {member.describe()} follows", member.member_id


def standby_rank(local_id: int | None, live: Sequence[MemberStatus]) -> int:
    """This host's turn among the standbys: 0 for the live follower with the lowest member ID,
    1 for the next; a host whose member does not answer comes after every live follower."""
    followers = sorted({m.member_id for m in live if not m.is_leader})
    return followers.index(local_id) if local_id in followers else len(followers)


def _rank(config: Config, local_id: int | None) -> int:
    try:
        live = EtcdSource(config.etcd).healthy_members()
    except BackupError as exc:
        log.warning("standby: cannot list the live members (%s); taking the first turn", exc)
        return 0
    return standby_rank(local_id, live)


def uncovered(
    targets: Sequence[Destination], fire: datetime, cluster: Cluster, clock: Clock = SYSTEM_CLOCK
) -> list[Destination]:
    """The destinations holding no backup of this cluster taken at or after `fire` (or that
    cannot be listed): another cluster's backups, or one dated in the future, say nothing about
    this fire time."""
    held = list_held({t.name: t.manifests for t in targets}, cluster.owns, context="standby: ")
    now = clock.now()
    return [
        t
        for t in targets
        if not any(
            m.created >= fire and not is_future(m.created, now) for m in held.held.get(t.name, [])
        )
    ]


def writer_patience(config: Config, targets: Sequence[Destination]) -> float:
    """How long a standby waits while a snapshot of the fire time is still being written into
    `targets`: as long as a live run may still be writing into the slowest of them. Its own
    writer gives an S3 upload up at the destination's `deadline`; a local `.part` file untouched
    for STALE_PART_AGE is a killed run's. Past that, what still looks in progress was left by a
    host that died mid-write, and the standby takes the fire time itself. Derived from the
    config, not fixed, so an operator who lets a slow store take longer (or less) has the
    standby wait just as long: no second upload beside a live one, no hour lost to a dead one.
    With the defaults both bounds are one hour."""
    names = {t.name for t in targets}
    return max(
        (
            d.deadline if isinstance(d, S3Destination) else STALE_PART_AGE.total_seconds()
            for d in config.destination
            if d.name in names
        ),
        default=STALE_PART_AGE.total_seconds(),
    )


def _wait_for_writers(
    targets: Sequence[Destination],
    fire: datetime,
    stopping: threading.Event,
    patience: float,
    clock: Clock,
) -> bool:
    """Wait while a snapshot of `fire` is being written into any of `targets`, at most
    `patience` seconds; False when the process is stopping."""
    deadline = clock.monotonic() + patience
    while clock.monotonic() < deadline:
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
            return False
    return True


def plan(
    config: Config,
    targets: list[Destination],
    fire: datetime,
    stopping: threading.Event,
    clock: Clock = SYSTEM_CLOCK,
) -> Plan:
    """Decide who backs up the fire time `fire`; a standby waits and looks before it acts."""
    role, reason, local_id = local_role(config)
    if role == "active":
        return Plan("active", reason, tuple(targets))
    rank = _rank(config, local_id)
    grace = config.schedule.standby_grace * (rank + 1)
    log.info(
        "standby %d: %s; waiting %.0f s for the snapshot of %s",
        rank + 1,
        reason,
        grace,
        fire.isoformat(),
    )
    if stopping.wait(grace):
        return Plan("standby", "stopping", ())
    if not _wait_for_writers(targets, fire, stopping, writer_patience(config, targets), clock):
        return Plan("standby", "stopping", ())
    try:
        cluster = identify_cluster(config.etcd)
    except BackupError as exc:
        log.warning("standby: %s", exc)
        return Plan("active", "cannot tell this cluster's backups", tuple(targets))
    missing = uncovered(targets, fire, cluster, clock)
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
