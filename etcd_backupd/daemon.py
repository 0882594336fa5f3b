"""`etcd-backupd run`: cycles on cron schedules, one at a time, with retries, catch-up, a lock
per state directory, clean shutdown on SIGTERM/SIGINT, reload on SIGHUP, systemd notify and the
metrics server."""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import math
import os
import random
import signal
import stat
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from prometheus_client import CollectorRegistry

from .config import Config, DestinationConfig, load_config
from .coordination import fire_minute, plan
from .cron import CronSchedule
from .cycle import CycleResult, run_cycle, within_stall_timeout
from .destinations import build
from .drill import DrillResult, drill
from .drill_record import record_result
from .errors import BackupError, DestinationBusy, ExitCode
from .etcd import identify_cluster
from .fsutil import make_private_dir
from .manifest import Cluster, Manifest
from .metrics import BackupMetrics, MetricsServer
from .notify import Notifications
from .restore import find_tools
from .retention import is_future
from .sdnotify import Notifier

log = logging.getLogger(__name__)

LOCK_NAME = "etcd-backupd.lock"
# APScheduler 3 drops a fire delayed by more than a second by default; a busy host is no reason
# to skip a backup.
MISFIRE_GRACE_SECONDS = 300
# how far back to look for the fire time before "now" when deciding on a catch-up
_LOOKBACK = (timedelta(hours=1), timedelta(days=1), timedelta(days=32), timedelta(days=367))
# Fire times read to find a schedule's longest gap: a week and a day shows every weekly pattern
# (a weekend without backups included); the count bounds the work (a per-minute schedule).
_INTERVAL_HORIZON = timedelta(days=8)
_INTERVAL_MAX_FIRES = 12_000


class LockHeld(BackupError):
    """Another daemon holds this state directory."""

    exit_code = ExitCode.TEMPFAIL


class StateLock:
    """One daemon per state directory: an flock on a file holding the owner's PID."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        try:
            make_private_dir(state_dir)
            # never through a symlink: the file is truncated next
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            reason = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
            raise BackupError(f"state_dir: cannot create {self.path}: {reason}") from exc
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise BackupError(f"state_dir: {self.path} is not a regular file")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise LockHeld(
                f"another etcd-backupd (pid {owner}) already runs with state_dir "
                f"{state_dir}; stop it first, or give this one its own state_dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self._fd)


class CronTrigger(BaseTrigger):  # type: ignore[misc]
    """APScheduler's view of a `CronSchedule`: cron's own semantics, not `from_crontab`'s."""

    __slots__ = ("schedule",)

    def __init__(self, schedule: CronSchedule) -> None:
        self.schedule = schedule

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        # as APScheduler's own triggers: the first fire time at or after `now`, or right after
        # the previous one when that comes earlier (so a late scheduler catches up)
        start = now
        if previous_fire_time is not None:
            start = min(now, previous_fire_time + timedelta(microseconds=1))
        return self.schedule.next_after(start - timedelta(microseconds=1))

    def __str__(self) -> str:
        return f"cron[{', '.join(self.schedule.expressions)}]"


@dataclass(frozen=True)
class Schedule:
    """Which destinations are due at which times: each destination follows its own cron, or the
    global one; and when drills run."""

    triggers: dict[str, CronTrigger]  # destination name -> its trigger
    drill: CronTrigger
    zone: ZoneInfo

    @classmethod
    def of(cls, config: Config) -> Schedule:
        zone = ZoneInfo(config.schedule.timezone)
        triggers = {
            destination.name: CronTrigger(
                CronSchedule.parse(destination.cron or config.schedule.cron, zone)
            )
            for destination in config.destination
        }
        return cls(triggers, CronTrigger(CronSchedule.parse(config.drill.cron, zone)), zone)

    def combined(self) -> OrTrigger:
        return OrTrigger(list(self.triggers.values()))

    def due(self, fire_time: datetime) -> list[str]:
        """Destinations whose schedule fires at `fire_time` (to the minute)."""
        minute = fire_time.replace(second=0, microsecond=0)
        just_before = minute - timedelta(microseconds=1)
        return [
            name
            for name, trigger in self.triggers.items()
            if trigger.get_next_fire_time(None, just_before) == minute
        ]

    def intervals(self, now: datetime) -> tuple[float, dict[str, float]]:
        """The longest wait between two fire times of any destination, and of each destination:
        what a stale alert must allow. Infinite for a schedule that fires less than twice."""
        computed: dict[tuple[str, ...], list[float]] = {}
        fires = {}
        for name, trigger in self.triggers.items():
            # destinations following the global cron share one computation
            key = tuple(trigger.schedule.expressions)
            if key not in computed:
                computed[key] = _fire_times(trigger.schedule, now)
            fires[name] = computed[key]
        # past the end of the shortest list, a gap would only be where that list stopped
        end = min((f[-1] for f in computed.values() if f), default=math.inf)
        merged = sorted({t for f in computed.values() for t in f if t <= end})
        return _longest_gap(merged), {name: _longest_gap(f) for name, f in fires.items()}

    def previous_fire(self, now: datetime) -> datetime | None:
        trigger = self.combined()
        for lookback in _LOOKBACK:
            fire: datetime | None = trigger.get_next_fire_time(None, now - lookback)
            if fire is None or fire > now:
                continue
            while True:
                following: datetime | None = trigger.get_next_fire_time(
                    fire, fire + timedelta(seconds=1)
                )
                if following is None or following > now:
                    return fire
                fire = following
        return None


def _fire_times(schedule: CronSchedule, now: datetime) -> list[float]:
    fires: list[float] = []
    moment = now
    while len(fires) < _INTERVAL_MAX_FIRES and (fire := schedule.next_after(moment)) is not None:
        # Unix time: the difference of two wall-clock times in one zone ignores a DST change
        fires.append(fire.timestamp())
        if fire > now + _INTERVAL_HORIZON and len(fires) >= 3:
            break
        moment = fire
    return fires


def _longest_gap(fires: list[float]) -> float:
    return max((later - earlier for earlier, later in itertools.pairwise(fires)), default=math.inf)


class Daemon:
    def __init__(self, config_path: Path, config: Config, notifier: Notifier | None = None):
        self.config_path = config_path
        self.config = config
        self.notifier = notifier or Notifier()
        self.notifications = Notifications(config.notify, cluster=config.etcd.cluster_name)
        self.metrics = BackupMetrics(CollectorRegistry())
        self.stopping = threading.Event()
        self.cancel = threading.Event()
        self._cycle_lock = threading.Lock()
        self._reload_requested = threading.Event()
        self._scheduler = BackgroundScheduler(timezone=ZoneInfo(config.schedule.timezone))
        self._scheduler.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES)
        self._schedule = Schedule.of(config)
        self._server: MetricsServer | None = None
        self._cycle_done = threading.Condition()
        # whose backups count in a destination other clusters may share; None until known
        self.cluster: Cluster | None = None

    def healthy(self) -> bool:
        return bool(self._scheduler.running) and not self.stopping.is_set()

    def ready(self) -> bool:
        return self.healthy() and self._scheduler.get_job("backup") is not None

    def _on_skipped(self, event: JobExecutionEvent) -> None:
        log.warning(
            "skipped the backup due at %s: the previous one is still running",
            event.scheduled_run_time,
        )
        self.metrics.skipped()

    def _ours(self, settings: DestinationConfig) -> list[Manifest]:
        """This cluster's backups in a destination; raises BackupError."""
        cluster = self.cluster
        if cluster is None:
            raise BackupError("cannot tell this cluster's backups until etcd answers")
        held = within_stall_timeout(settings, "listing", build(settings).manifests)
        return [m for m in held if cluster.owns(m)]

    def _load_held(self, chosen: list[DestinationConfig] | None = None) -> None:
        if self.cluster is None:
            self._identify_cluster()
        held = {}
        for settings in self.config.destination if chosen is None else chosen:
            try:
                held[settings.name] = self._ours(settings)
            except BackupError as exc:
                log.warning("cannot list destination %s: %s", settings.name, exc)
        self.metrics.load(held)

    def _identify_cluster(self) -> None:
        """Label the metrics with the cluster ID even before this host has any backup."""
        try:
            self.cluster = identify_cluster(self.config.etcd)
        except BackupError as exc:
            log.warning("cannot reach etcd at start: %s", exc)
            return
        if self.cluster.id is not None:
            self.metrics.set_cluster(self.cluster.id)

    def newest_backup(self) -> datetime | None:
        now = datetime.now(UTC)
        times: list[datetime] = []
        for settings in self.config.destination:
            try:
                times.extend(m.created for m in self._ours(settings))
            except BackupError as exc:
                log.warning("cannot list destination %s: %s", settings.name, exc)
        return max((t for t in times if not is_future(t, now)), default=None)

    def _schedule_jobs(self, schedule: Schedule) -> None:
        self._schedule = schedule
        self._scheduler.add_job(
            self._fire,
            self._schedule.combined(),
            id="backup",
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=MISFIRE_GRACE_SECONDS,
        )
        self._schedule_drill()
        self._update_next_run()
        self.metrics.set_schedule(*self._schedule.intervals(datetime.now(self._schedule.zone)))

    def _schedule_drill(self) -> None:
        if not self.config.drill.enabled:
            if self._scheduler.get_job("drill") is not None:
                self._scheduler.remove_job("drill")
            return
        self._scheduler.add_job(
            self._drill,
            self._schedule.drill,
            id="drill",
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=MISFIRE_GRACE_SECONDS,
        )

    def _drill(self) -> None:
        """Drills share the cycle lock: a drill never slows a backup down."""
        with self._cycle_lock:
            try:
                tools = find_tools(self.config.drill.bin_dir)
            except BackupError as exc:
                log.error("drill: %s", exc)
                for settings in self.config.destination:
                    self.metrics.observe_drill(settings.name, False, 0.0)
                    self.notifications.drill_finished(
                        DrillResult(settings.name, "", False, 0.0, str(exc))
                    )
                return
            if self.cluster is None:
                self._identify_cluster()
            for settings in self.config.destination:
                if self.cluster is None:
                    unknown = "cannot tell this cluster's backups until etcd answers"
                    log.error("drill of %s: %s", settings.name, unknown)
                    result = DrillResult(settings.name, "", False, 0.0, unknown)
                else:
                    result = drill(
                        build(settings),
                        tools,
                        self.config.drill.expect_prefixes,
                        cluster=self.cluster,
                        now=datetime.now(UTC),
                        credentials=self.config.etcd.credentials,
                    )
                self.metrics.observe_drill(settings.name, result.ok, result.seconds)
                record_result(self.config.state_dir, result, datetime.now(UTC))
                self.notifications.drill_finished(result)

    def _update_next_run(self) -> None:
        job = self._scheduler.get_job("backup")
        if job is not None and job.next_run_time is not None:
            self.metrics.next_run.set(job.next_run_time.timestamp())

    def _fire(self) -> None:
        fired = datetime.now(self._schedule.zone)
        due = self._schedule.due(fired) or [d.name for d in self.config.destination]
        jitter = self.config.schedule.jitter
        if jitter and self.stopping.wait(random.uniform(0, jitter)):
            return
        self._back_up_fire(fire_minute(fired), due)

    def _back_up_fire(self, fire: datetime, due: list[str]) -> None:
        """One fire time: back up, or stand by while another host does (coordination)."""
        targets = [build(d) for d in self.config.destination if d.name in due]
        decided = plan(self.config, targets, fire, self.stopping)
        self.metrics.set_role(decided.role)
        if decided.destinations:
            self._run_with_retries([t.name for t in decided.destinations])
        else:
            # a standby still answers "how old is the cluster's last backup"
            self._load_held()
            self.notifier.status(f"standby: {decided.reason}"[:200])
        self._update_next_run()

    def _run_with_retries(self, due: list[str]) -> None:
        attempts = 1 + self.config.schedule.retry_attempts
        backoff = self.config.schedule.retry_backoff
        for attempt in range(1, attempts + 1):
            result = self._cycle(due)
            # another run holding every destination is taking this backup: nothing to retry
            busy = result is not None and result.exit_code == DestinationBusy.exit_code
            if result is None or result.ok or busy or self.stopping.is_set():
                return
            job = self._scheduler.get_job("backup")
            next_fire = job.next_run_time if job is not None else None
            pause = backoff * 2 ** (attempt - 1)
            if attempt == attempts:
                log.error("backup failed %d time(s); waiting for the next fire time", attempts)
                return
            if (
                next_fire is not None
                and datetime.now(next_fire.tzinfo) + timedelta(seconds=pause) >= next_fire
            ):
                log.error("backup failed; the next fire time comes before a retry would")
                return
            log.warning("backup failed; retry %d of %d in %.0f s", attempt, attempts - 1, pause)
            if self.stopping.wait(pause):
                return

    def _cycle(self, due: list[str]) -> CycleResult | None:
        if not self._cycle_lock.acquire(blocking=False):
            self.metrics.skipped()
            log.warning("skipped a backup: another one is still running")
            return None
        try:
            config = self.config
            chosen = [d for d in config.destination if d.name in due]
            log.info("backup starting for %s", ", ".join(d.name for d in chosen))
            self.notifier.status("backing up")
            self.notifications.cycle_started()
            result = run_cycle(config, destinations=[build(d) for d in chosen], cancel=self.cancel)
            if result.manifest is not None:
                self.cluster = Cluster(result.manifest.cluster_name, result.manifest.cluster_id)
            if result.exit_code == DestinationBusy.exit_code:
                self.metrics.skipped()
            else:
                self.metrics.observe(result)
            self.notifications.cycle_finished(result)
            self._load_held(chosen)
            summary = (
                f"last backup {result.manifest.snapshot if result.manifest else ''} ok"
                if result.ok
                else f"last backup FAILED at {result.failed_stage}: {result.error}"
            )
            self.notifier.status(summary[:200])
            return result
        finally:
            self._update_next_run()
            self._cycle_lock.release()
            with self._cycle_done:
                self._cycle_done.notify_all()

    def _catch_up(self) -> None:
        now = datetime.now(self._schedule.zone)
        previous = self._schedule.previous_fire(now)
        newest = self.newest_backup()
        if previous is None or (newest is not None and newest >= previous):
            return
        log.info(
            "catching up: the newest backup (%s) predates the last fire time %s",
            newest.isoformat() if newest else "none",
            previous.isoformat(),
        )
        threading.Thread(
            target=self._back_up_fire,
            args=(previous, [d.name for d in self.config.destination]),
            name="catch-up",
            daemon=True,
        ).start()

    def _reload(self) -> None:
        try:
            config = load_config(self.config_path)
            schedule = Schedule.of(config)
        except BackupError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        self.config = config
        self.notifications.reconfigure(config.notify, config.etcd.cluster_name)
        self._schedule_jobs(schedule)
        log.info("config reloaded from %s", self.config_path)

    def _signal(self, signum: int, _: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload_requested.set()
        else:
            log.info("%s received: shutting down", signal.Signals(signum).name)
            self.stopping.set()

    def run(self) -> int:
        lock = StateLock(self.config.state_dir)
        try:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, self._signal)
            self._scheduler.start()
            self._schedule_jobs(self._schedule)
            if self.config.metrics.listen:
                self._server = MetricsServer(
                    self.metrics, self.config.metrics, self.healthy, self.ready
                )
                log.info("metrics on %s", self.config.metrics.listen)
            job = self._scheduler.get_job("backup")
            log.info("scheduled; next backup at %s", job.next_run_time if job else "never")
            self.notifier.ready("scheduled")
            threading.Thread(target=self._start_up, name="start-up", daemon=True).start()
            self._wait()
            self._shutdown()
        finally:
            if self._server is not None:
                self._server.close()
            lock.release()
        return ExitCode.OK

    def _start_up(self) -> None:
        """What the daemon reads from the destinations and etcd at start, after READY: a slow
        or hung store delays the last_* metrics and the catch-up, never the start itself
        (systemd gives a unit 90 s to report ready)."""
        self._load_held()  # which identifies the cluster first
        if self.config.schedule.catch_up and not self.stopping.is_set():
            self._catch_up()

    def _wait(self) -> None:
        interval = self.notifier.watchdog_interval
        while not self.stopping.wait(min(interval or 1.0, 1.0)):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self._reload()
            if interval is not None:
                self.notifier.watchdog()

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self._scheduler.shutdown(wait=False)
        deadline = time.monotonic() + self.config.schedule.shutdown_timeout
        with self._cycle_done:
            while self._cycle_lock.locked() and time.monotonic() < deadline:
                self._cycle_done.wait(timeout=1.0)
        if self._cycle_lock.locked():
            log.warning("the running backup did not finish in time: aborting it cleanly")
            self.cancel.set()
            with self._cycle_done:
                while self._cycle_lock.locked():
                    self._cycle_done.wait(timeout=1.0)
        self.notifications.close()
        log.info("stopped")
