"""The `etcd-backupd` command: the top-level parser, logging set-up, dispatch and the exit code;
and `once` and `run`. Every other command is a module of commands/."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .commands import add_parsers
from .commands.common import config_option, output_option
from .commands.common import print_error as _print_error
from .commands.common import print_json as _print_json
from .errors import BackupError, ExitCode
from .logs import setup_logging

if TYPE_CHECKING:
    from .config import Config
    from .cycle import CycleResult
    from .reporting import Reporting

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etcd-backupd",
        description="Scheduled, verified backups of etcd v3: snapshot, verify, ship, prune.",
        epilog="Run 'etcd-backupd COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"etcd-backupd {__version__}")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("ETCD_BACKUPD_LOG_FORMAT", "text"),
        help="text for people, json (one object per line) for journald and Kubernetes",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument(
        "--debug", action="store_true", help="debug logging and full tracebacks on errors"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    once = commands.add_parser(
        "once",
        help="take one backup now and ship it to every destination",
        description="Take one snapshot, verify it and ship it to every destination. Exits 0 "
        "only when every destination received a verified snapshot.",
    )
    config_option(once)
    output_option(once)
    once.add_argument(
        "--pushgateway",
        metavar="URL",
        help="push the backup metrics to this Prometheus pushgateway, grouped by cluster and host",
    )
    once.add_argument(
        "--textfile",
        metavar="PATH",
        type=Path,
        help="write the backup metrics to PATH (*.prom) for node_exporter's textfile collector",
    )
    once.set_defaults(handler=cmd_once)

    add_parsers(commands, "inspect", "diff", "restore", "restore_plan", "drill")

    run = commands.add_parser(
        "run",
        help="run as a service: back up on the configured schedule",
        description="Run as a long-lived service: take a backup at each fire time of the "
        "[schedule] cron expressions (and each destination's own), one at a time, retrying "
        "failures and catching up at start; serve /metrics, /healthz and /readyz; reload the "
        "config on SIGHUP; finish or cleanly abort the running backup on SIGTERM.",
    )
    config_option(run)
    run.set_defaults(handler=cmd_run)
    add_parsers(commands, "verify", "list", "prune", "check_config", "init", "status")
    return parser


def _reporting(args: argparse.Namespace, config: Config) -> Reporting:
    """What `once` reports to: the notifications, and the daemon's metrics when they are
    exported (the timer or CronJob that runs it then alerts like the daemon does)."""
    from prometheus_client import CollectorRegistry

    from .metrics import BackupMetrics
    from .notify import Notifications
    from .reporting import ExportObserver, MetricsObserver, NotifyObserver, Reporting
    from .scheduler import Schedule

    notify = NotifyObserver(Notifications(config.notify, cluster=config.etcd.cluster_name))
    if not (args.textfile or args.pushgateway):
        return Reporting(config, [notify])
    metrics = BackupMetrics(CollectorRegistry())
    export = ExportObserver(metrics, socket.gethostname(), args.textfile, args.pushgateway)
    reporting = Reporting(config, [MetricsObserver(metrics), notify, export], metrics=metrics)
    # the timer or CronJob that runs `once` is expected to follow [schedule]
    reporting.schedule_changed(Schedule.of(config).intervals(datetime.now(UTC)))
    return reporting


def cmd_once(args: argparse.Namespace) -> int:
    from .config import load_config
    from .coordination import fire_minute, plan
    from .cycle import run_cycle
    from .destinations import build

    config = load_config(args.config)
    _warn_loose_permissions(config, args.config)
    targets = [build(d) for d in config.destination]
    # SIGTERM (a CronJob pod or a timer being stopped) and Ctrl-C end the run within about a
    # second, cleaning up after it, instead of killing it mid-write
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    decided = plan(config, targets, fire_minute(datetime.now(UTC)), stopping)
    reporting = _reporting(args, config)
    result: CycleResult | None = None
    try:
        reporting.planned(decided.role, decided.reason)
        if decided.destinations:
            names = [t.name for t in decided.destinations]
            reporting.cycle_started(names)
            result = run_cycle(config, destinations=decided.destinations, cancel=stopping)
            reporting.cycle_finished(result, names)
    finally:
        reporting.close()
    if result is None:
        if args.output == "json":
            _print_json(
                {"ok": True, "standby": decided.reason, "snapshot": None, "destinations": []}
            )
        else:
            print(f"standby: {decided.reason}; no snapshot taken")
        return ExitCode.OK
    if args.output == "json":
        _print_json(
            {
                "ok": result.ok,
                "error": result.error,
                "failed_stage": result.failed_stage,
                "duration_seconds": round(result.duration, 3),
                "stage_seconds": {k: round(v, 3) for k, v in result.stage_seconds.items()},
                "snapshot": result.manifest.model_dump(mode="json") if result.manifest else None,
                "destinations": [
                    {"name": d.name, "ok": d.ok, "busy": d.busy, "error": d.error}
                    for d in result.destinations
                ],
            }
        )
    elif result.manifest is not None:
        print(
            f"snapshot {result.manifest.snapshot}: revision {result.manifest.revision}, "
            f"{result.manifest.size} bytes, {result.duration:.1f} s"
        )
        for d in result.destinations:
            outcome = "ok" if d.ok else ("left to another run: " if d.busy else "FAILED: ")
            print(f"  {d.name}: {outcome if d.ok else outcome + (d.error or '')}")
    else:
        _print_error(args, f"backup failed at {result.failed_stage}: {result.error}")
    return result.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .daemon import Daemon

    config = load_config(args.config)
    _warn_loose_permissions(config, args.config)
    return Daemon(args.config, config).run()


def _warn_loose_permissions(config: Config, path: Path) -> None:
    from .config_files import loose_permissions

    for warning in loose_permissions(config, path):
        log.warning("%s", warning)


_M_ARENA_MAX = -8


def _limit_malloc_arenas() -> None:
    """glibc gives each of gRPC's threads its own malloc arena; two keep peak RSS down with no
    measurable cost to the stream."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    _limit_malloc_arenas()
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format, "debug" if args.debug else args.log_level)
    try:
        return int(args.handler(args))
    except BackupError as exc:
        _print_error(args, f"etcd-backupd: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _print_error(args, "etcd-backupd: interrupted")
        return ExitCode.INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        _print_error(
            args,
            f"etcd-backupd: internal error: {exc!r} (run with --debug for the traceback, "
            "and please report it)",
        )
        return ExitCode.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
