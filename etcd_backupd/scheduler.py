"""When backups and drills run: cron triggers per destination, the APScheduler jobs, one cycle at
a time with retries, the catch-up after a start that missed a fire time, and drills."""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger

from .clock import SYSTEM_CLOCK, Clock
from .config import Config
from .coordination import fire_minute, plan
from .cron import CronSchedule
from .cycle import CycleResult, run_cycle
from .destinations import build
from .destinations.held import UNKNOWN_CLUSTER
from .drill import DrillResult, drill
from .drill_record import record_result
from .encryption import load_identities
from .errors import BackupError, DestinationBusy
from .memory import release_freed_memory
from .overlap import OneAtATime
from .reporting import Reporting
from .restore import find_tools
from .retention import is_future

log = logging.getLogger(__name__)

# APScheduler 3 drops a fire delayed by more than a second by default; a busy host is no reason
# to skip a backup.
MISFIRE_GRACE_SECONDS = 300
# how far back to look for the fire time before "now" when deciding on a catch-up
_LOOKBACK = (timedelta(hours=1), timedelta(days=1), timedelta(days=32), timedelta(days=367))
# Fire times read to find a schedule's longest gap: a week and a day shows every weekly pattern
# (a weekend without backups included); the count bounds the work (a per-minute schedule).
_INTERVAL_HORIZON = timedelta(days=8)
_INTERVAL_MAX_FIRES = 12_000


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


class Scheduler:
    """Runs backups at their fire times and drills at theirs, one at a time: a cycle never
    overlaps another, and a drill never slows a backup down."""

    def __init__(
        self,
        config: Config,
        reporting: Reporting,
        *,
        stopping: threading.Event,
        cancel: threading.Event,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.reporting = reporting
        self.stopping = stopping
        self.cancel = cancel
        self.clock = clock
        # cycles and drills take turns: a fire time finding one running is skipped
        self.turns = OneAtATime(clock)
        self._jobs = BackgroundScheduler(timezone=ZoneInfo(config.schedule.timezone))
        self._jobs.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES)
        self.schedule = Schedule.of(config)

    @property
    def running(self) -> bool:
        return bool(self._jobs.running)

    @property
    def scheduled(self) -> bool:
        return self._jobs.get_job("backup") is not None

    def next_run(self) -> datetime | None:
        job = self._jobs.get_job("backup")
        return job.next_run_time if job is not None else None

    def start(self) -> None:
        self._jobs.start()
        self._schedule_jobs()

    def apply(self, config: Config, schedule: Schedule) -> None:
        """A reloaded config: the next fire times follow it."""
        self.config = config
        self.schedule = schedule
        self._schedule_jobs()

    def stop(self, timeout: float) -> None:
        """No new job; the running cycle gets `timeout` seconds, then is cancelled cleanly."""
        self._jobs.shutdown(wait=False)
        if not self.turns.wait_idle(timeout):
            log.warning("the running backup did not finish in time: aborting it cleanly")
            self.cancel.set()
            self.turns.wait_idle()

    def _on_skipped(self, event: JobExecutionEvent) -> None:
        log.warning(
            "skipped the backup due at %s: the previous one is still running",
            event.scheduled_run_time,
        )
        self.reporting.skipped()

    def newest_backup(self) -> datetime | None:
        now = self.clock.now()
        times = [m.created for held in self.reporting.held().held.values() for m in held]
        return max((t for t in times if not is_future(t, now)), default=None)

    def _schedule_jobs(self) -> None:
        self._jobs.add_job(
            self._fire,
            self.schedule.combined(),
            id="backup",
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=MISFIRE_GRACE_SECONDS,
        )
        self._schedule_drill()
        self._update_next_run()
        self.reporting.schedule_changed(self.schedule.intervals(self._now()))

    def _schedule_drill(self) -> None:
        if not self.config.drill.enabled:
            if self._jobs.get_job("drill") is not None:
                self._jobs.remove_job("drill")
            return
        self._jobs.add_job(
            self.drill_now,
            self.schedule.drill,
            id="drill",
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=MISFIRE_GRACE_SECONDS,
        )

    def _now(self) -> datetime:
        """Now in the schedule's zone: cron fields are read in it."""
        return self.clock.now().astimezone(self.schedule.zone)

    def drill_now(self) -> None:
        """Drill every destination now, after the running cycle if any: a drill never slows
        a backup down."""
        with self.turns.turn(wait=True):
            identity_file = self.config.drill.identity_file
            try:
                tools = find_tools(self.config.drill.bin_dir)
                identities = load_identities([identity_file] if identity_file else [])
            except BackupError as exc:
                log.error("drill: %s", exc)
                for settings in self.config.destination:
                    self.reporting.drilled(DrillResult(settings.name, "", False, 0.0, str(exc)))
                return
            cluster = self.reporting.our_cluster()
            for settings in self.config.destination:
                if cluster is None:
                    log.error("drill of %s: %s", settings.name, UNKNOWN_CLUSTER)
                    result = DrillResult(settings.name, "", False, 0.0, UNKNOWN_CLUSTER)
                else:
                    result = drill(
                        build(settings),
                        tools,
                        self.config.drill.expect_prefixes,
                        cluster=cluster,
                        now=self.clock.now(),
                        credentials=self.config.etcd.credentials,
                        identities=identities,
                    )
                record_result(self.config.state_dir, result, self.clock.now())
                self.reporting.drilled(result)
            release_freed_memory()

    def _update_next_run(self) -> None:
        next_run = self.next_run()
        if next_run is not None:
            self.reporting.next_run(next_run)

    def _fire(self) -> None:
        fired = self._now()
        due = self.schedule.due(fired) or [d.name for d in self.config.destination]
        jitter = self.config.schedule.jitter
        if jitter and self.stopping.wait(random.uniform(0, jitter)):
            return
        self.back_up_fire(fire_minute(fired), due)

    def back_up_fire(self, fire: datetime, due: list[str]) -> None:
        """One fire time: back up, or stand by while another host does (coordination)."""
        targets = [build(d) for d in self.config.destination if d.name in due]
        decided = plan(self.config, targets, fire, self.stopping)
        self.reporting.planned(decided.role, decided.reason)
        if decided.destinations:
            self._run_with_retries([t.name for t in decided.destinations])
        self._update_next_run()

    def _run_with_retries(self, due: list[str]) -> None:
        attempts = 1 + self.config.schedule.retry_attempts
        backoff = self.config.schedule.retry_backoff
        for attempt in range(1, attempts + 1):
            result = self.run_due(due)
            # another run holding every destination is taking this backup: nothing to retry
            busy = result is not None and result.exit_code == DestinationBusy.exit_code
            if result is None or result.ok or busy or self.stopping.is_set():
                return
            next_fire = self.next_run()
            pause = backoff * 2 ** (attempt - 1)
            if attempt == attempts:
                log.error("backup failed %d time(s); waiting for the next fire time", attempts)
                return
            if next_fire is not None and self.clock.now() + timedelta(seconds=pause) >= next_fire:
                log.error("backup failed; the next fire time comes before a retry would")
                return
            log.warning("backup failed; retry %d of %d in %.0f s", attempt, attempts - 1, pause)
            if self.stopping.wait(pause):
                return

    def run_due(self, due: list[str]) -> CycleResult | None:
        """Back up to the destinations named in `due` now, unless a cycle or drill is running
        (then it is counted as skipped and None is returned)."""
        with self.turns.turn(wait=False) as mine:
            if not mine:
                self.reporting.skipped()
                log.warning("skipped a backup: another one is still running")
                return None
            try:
                config = self.config
                chosen = [d for d in config.destination if d.name in due]
                names = [d.name for d in chosen]
                log.info("backup starting for %s", ", ".join(names))
                self.reporting.cycle_started(names)
                result = run_cycle(
                    config, destinations=[build(d) for d in chosen], cancel=self.cancel
                )
                self.reporting.cycle_finished(result, names)
                return result
            finally:
                self._update_next_run()
                # the daemon idles far longer than it works: between cycles it holds only
                # what it keeps
                release_freed_memory()

    def catch_up(self) -> None:
        """Back up at once when the newest backup predates the last fire time (the host was
        down then)."""
        now = self._now()
        previous = self.schedule.previous_fire(now)
        newest = self.newest_backup()
        if previous is None or (newest is not None and newest >= previous):
            return
        log.info(
            "catching up: the newest backup (%s) predates the last fire time %s",
            newest.isoformat() if newest else "none",
            previous.isoformat(),
        )
        threading.Thread(
            target=self.back_up_fire,
            args=(previous, [d.name for d in self.config.destination]),
            name="catch-up",
            daemon=True,
        ).start()
