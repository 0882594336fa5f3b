"""`etcd-backupd run`: the process around the scheduler: a lock per state directory, start-up
(READY before anything slow), clean shutdown on SIGTERM/SIGINT within shutdown_timeout, reload on
SIGHUP, the systemd watchdog, and the metrics server with its health and readiness checks."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import stat
import threading
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry

from .clock import SYSTEM_CLOCK, Clock
from .config import Config, load_config
from .errors import BackupError, ExitCode
from .fsutil import make_private_dir
from .metrics import BackupMetrics, MetricsServer
from .notify import Notifications
from .reporting import MetricsObserver, NotifyObserver, Reporting, SystemdObserver
from .scheduler import Schedule, Scheduler
from .sdnotify import Notifier

log = logging.getLogger(__name__)

LOCK_NAME = "etcd-backupd.lock"


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


class Daemon:
    def __init__(
        self,
        config_path: Path,
        config: Config,
        notifier: Notifier | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ):
        self.config_path = config_path
        self.config = config
        self.notifier = notifier or Notifier()
        self.notifications = Notifications(config.notify, cluster=config.etcd.cluster_name)
        self.metrics = BackupMetrics(CollectorRegistry())
        self.reporting = Reporting(
            config,
            [
                MetricsObserver(self.metrics),
                SystemdObserver(self.notifier),
                NotifyObserver(self.notifications),
            ],
            metrics=self.metrics,
        )
        self.stopping = threading.Event()
        self._reload_requested = threading.Event()
        self.scheduler = Scheduler(
            config,
            self.reporting,
            stopping=self.stopping,
            cancel=threading.Event(),
            clock=clock,
        )
        self._server: MetricsServer | None = None

    def healthy(self) -> bool:
        return self.scheduler.running and not self.stopping.is_set()

    def ready(self) -> bool:
        return self.healthy() and self.scheduler.scheduled

    def _reload(self) -> None:
        try:
            config = load_config(self.config_path)
            schedule = Schedule.of(config)
        except BackupError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        self.config = config
        self.reporting.config = config
        self.notifications.reconfigure(config.notify, config.etcd.cluster_name)
        self.scheduler.apply(config, schedule)
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
            self.scheduler.start()
            if self.config.metrics.listen:
                self._server = MetricsServer(
                    self.metrics, self.config.metrics, self.healthy, self.ready
                )
                log.info("metrics on %s", self.config.metrics.listen)
            log.info("scheduled; next backup at %s", self.scheduler.next_run() or "never")
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
        self.reporting.refresh()  # which identifies the cluster first
        if self.config.schedule.catch_up and not self.stopping.is_set():
            self.scheduler.catch_up()

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
        self.scheduler.stop(self.config.schedule.shutdown_timeout)
        self.reporting.close()
        log.info("stopped")
