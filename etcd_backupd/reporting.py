"""Everything that reports what backups and drills did, as observers of their results: the
Prometheus metrics, systemd's status line, notifications and, for a one-shot job, the textfile
and pushgateway export. `once` and `run` report through the same `Reporting`, so a CronJob alerts
on the figures the daemon serves."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path

from .config import Config
from .coordination import Role
from .cycle import CycleResult
from .destinations import build
from .destinations.held import Listing, list_held
from .drill import DrillResult
from .errors import BackupError, DestinationBusy
from .etcd import identify_cluster
from .manifest import Cluster, Manifest
from .metrics import BackupMetrics, push, write_textfile
from .notify import Notifications
from .sdnotify import Notifier
from .stall import within_stall_timeout

log = logging.getLogger(__name__)


class Observer:
    """What happens to backups and drills, as reported; an observer overrides what it reports."""

    def on_cluster(self, cluster: Cluster) -> None:
        """etcd told which cluster this host backs up."""

    def on_plan(self, role: Role, reason: str) -> None:
        """This host's role at a fire time: active backs up next, standby leaves it to another."""

    def on_start(self, destinations: Sequence[str]) -> None:
        """A cycle begins, backing up to these destinations."""

    def on_result(self, result: CycleResult) -> None:
        """A cycle ended."""

    def on_skipped(self) -> None:
        """A fire time passed without a cycle: the previous one still ran."""

    def on_held(self, held: Mapping[str, Sequence[Manifest]]) -> None:
        """This cluster's backups in the destinations that could be listed."""

    def on_drill(self, result: DrillResult) -> None:
        """A drill of one destination ended."""

    def on_close(self) -> None:
        """Nothing more to report: deliver what is pending."""


class Observers(Observer):
    """Every observer, told in order: one that exports what another recorded comes after it."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = list(observers)

    def on_cluster(self, cluster: Cluster) -> None:
        for observer in self.observers:
            observer.on_cluster(cluster)

    def on_plan(self, role: Role, reason: str) -> None:
        for observer in self.observers:
            observer.on_plan(role, reason)

    def on_start(self, destinations: Sequence[str]) -> None:
        for observer in self.observers:
            observer.on_start(destinations)

    def on_result(self, result: CycleResult) -> None:
        for observer in self.observers:
            observer.on_result(result)

    def on_skipped(self) -> None:
        for observer in self.observers:
            observer.on_skipped()

    def on_held(self, held: Mapping[str, Sequence[Manifest]]) -> None:
        for observer in self.observers:
            observer.on_held(held)

    def on_drill(self, result: DrillResult) -> None:
        for observer in self.observers:
            observer.on_drill(result)

    def on_close(self) -> None:
        for observer in self.observers:
            observer.on_close()


class MetricsObserver(Observer):
    def __init__(self, metrics: BackupMetrics) -> None:
        self.metrics = metrics

    def on_cluster(self, cluster: Cluster) -> None:
        if cluster.id is not None:
            self.metrics.set_cluster(cluster.id)

    def on_plan(self, role: Role, reason: str) -> None:
        self.metrics.set_role(role)

    def on_result(self, result: CycleResult) -> None:
        # another run holding every destination took this backup: this one did not fail
        if result.exit_code == DestinationBusy.exit_code:
            self.metrics.skipped()
        else:
            self.metrics.observe(result)

    def on_skipped(self) -> None:
        self.metrics.skipped()

    def on_held(self, held: Mapping[str, Sequence[Manifest]]) -> None:
        self.metrics.load(held)

    def on_drill(self, result: DrillResult) -> None:
        self.metrics.observe_drill(result.destination, result.ok, result.seconds)


class SystemdObserver(Observer):
    """The status line `systemctl status` shows."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def on_plan(self, role: Role, reason: str) -> None:
        if role == "standby":
            self.notifier.status(f"standby: {reason}"[:200])

    def on_start(self, destinations: Sequence[str]) -> None:
        self.notifier.status("backing up")

    def on_result(self, result: CycleResult) -> None:
        summary = (
            f"last backup {result.manifest.snapshot if result.manifest else ''} ok"
            if result.ok
            else f"last backup FAILED at {result.failed_stage}: {result.error}"
        )
        self.notifier.status(summary[:200])


class NotifyObserver(Observer):
    def __init__(self, notifications: Notifications) -> None:
        self.notifications = notifications

    def on_start(self, destinations: Sequence[str]) -> None:
        self.notifications.cycle_started()

    def on_result(self, result: CycleResult) -> None:
        self.notifications.cycle_finished(result)

    def on_drill(self, result: DrillResult) -> None:
        self.notifications.drill_finished(result)

    def on_close(self) -> None:
        self.notifications.close()


class ExportObserver(Observer):
    """A one-shot job's metrics, exported once everything is recorded; a failure here never
    hides the backup's own."""

    def __init__(
        self, metrics: BackupMetrics, host: str, textfile: Path | None, pushgateway: str | None
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.textfile = textfile
        self.pushgateway = pushgateway

    def on_close(self) -> None:
        try:
            if self.textfile:
                write_textfile(self.metrics, self.textfile)
            if self.pushgateway:
                push(self.metrics, self.pushgateway, self.host)
        except BackupError as exc:
            log.error("%s", exc)


class Reporting:
    """Reports cycles, standbys and drills to the observers, and with them this cluster's
    backups as the destinations hold them, so a restart or a standby never reads as "no backup
    ever" and never hides a stale one."""

    def __init__(
        self,
        config: Config,
        observers: Sequence[Observer],
        *,
        metrics: BackupMetrics | None = None,
    ) -> None:
        self.config = config
        self.observers = Observers(observers)
        # the held backups are listed for the metrics alone: without them, nothing is listed
        self.metrics = metrics
        # whose backups count in a destination other clusters may share; None until known
        self.cluster: Cluster | None = None
        self._listed_all = False

    def our_cluster(self) -> Cluster | None:
        """This cluster, asking etcd when neither etcd nor a backup has told it yet."""
        if self.cluster is None:
            try:
                self.cluster = identify_cluster(self.config.etcd)
            except BackupError as exc:
                log.warning("cannot reach etcd: %s", exc)
                return None
            self.observers.on_cluster(self.cluster)
        return self.cluster

    def held(self, destinations: Sequence[str] | None = None) -> Listing:
        """This cluster's backups in the destinations (all, or those named)."""
        listers = {
            d.name: partial(within_stall_timeout, d, "listing", build(d).manifests)
            for d in self.config.destination
            if destinations is None or d.name in destinations
        }
        return list_held(listers, self.cluster.owns if self.cluster is not None else None)

    def refresh(self, destinations: Sequence[str] | None = None) -> None:
        """Report the backups held in the destinations (all, or those named)."""
        if self.metrics is None:
            return
        if destinations is None:
            self._listed_all = True
        self.our_cluster()
        self.observers.on_held(self.held(destinations).held)

    def schedule_changed(self, intervals: tuple[float, Mapping[str, float]]) -> None:
        if self.metrics is not None:
            self.metrics.set_schedule(*intervals)

    def next_run(self, when: datetime) -> None:
        if self.metrics is not None:
            self.metrics.next_run.set(when.timestamp())

    def planned(self, role: Role, reason: str) -> None:
        self.observers.on_plan(role, reason)
        if role == "standby":
            # a standby still answers "how old is the cluster's last backup"
            self.refresh()

    def cycle_started(self, destinations: Sequence[str]) -> None:
        self.observers.on_start(destinations)

    def cycle_finished(self, result: CycleResult, destinations: Sequence[str]) -> None:
        if result.manifest is not None:
            self.cluster = Cluster(result.manifest.cluster_name, result.manifest.cluster_id)
        self.observers.on_result(result)
        # what the other destinations hold was read before, unless nothing was yet
        self.refresh(destinations if self._listed_all else None)

    def skipped(self) -> None:
        self.observers.on_skipped()

    def drilled(self, result: DrillResult) -> None:
        self.observers.on_drill(result)

    def close(self) -> None:
        self.observers.on_close()
