"""`etcd-backupd once`: one backup now, to every destination, reported as the daemon reports
its cycles (for a systemd timer or a Kubernetes CronJob)."""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ExitCode
from .common import config_option, load_service_config, output_option, print_error, print_json

if TYPE_CHECKING:
    from ..config import Config
    from ..cycle import CycleResult
    from ..reporting import Reporting


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "once",
        help="take one backup now and ship it to every destination",
        description="Take one snapshot, verify it and ship it to every destination. Exits 0 "
        "only when every destination received a verified snapshot.",
    )
    config_option(parser)
    output_option(parser)
    parser.add_argument(
        "--pushgateway",
        metavar="URL",
        help="push the backup metrics to this Prometheus pushgateway, grouped by cluster and host",
    )
    parser.add_argument(
        "--textfile",
        metavar="PATH",
        type=Path,
        help="write the backup metrics to PATH (*.prom) for node_exporter's textfile collector",
    )
    parser.set_defaults(handler=run)


def _reporting(args: argparse.Namespace, config: Config) -> Reporting:
    """What `once` reports to: the notifications, and the daemon's metrics when they are
    exported (the timer or CronJob that runs it then alerts like the daemon does)."""
    from prometheus_client import CollectorRegistry

    from ..clock import SYSTEM_CLOCK
    from ..metrics import BackupMetrics
    from ..notify import Notifications
    from ..reporting import ExportObserver, MetricsObserver, NotifyObserver, Reporting
    from ..scheduler import Schedule

    notify = NotifyObserver(Notifications(config.notify, cluster=config.etcd.cluster_name))
    if not (args.textfile or args.pushgateway):
        return Reporting(config, [notify])
    metrics = BackupMetrics(CollectorRegistry())
    export = ExportObserver(metrics, socket.gethostname(), args.textfile, args.pushgateway)
    reporting = Reporting(config, [MetricsObserver(metrics), notify, export], metrics=metrics)
    # the timer or CronJob that runs `once` is expected to follow [schedule]
    reporting.schedule_changed(Schedule.of(config).intervals(SYSTEM_CLOCK.now()))
    return reporting


def run(args: argparse.Namespace) -> int:
    from ..clock import SYSTEM_CLOCK
    from ..coordination import fire_minute, plan
    from ..cycle import run_cycle
    from ..destinations import build

    config = load_service_config(args.config)
    targets = [build(d) for d in config.destination]
    # SIGTERM (a CronJob pod or a timer being stopped) and Ctrl-C end the run within about a
    # second, cleaning up after it, instead of killing it mid-write
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    decided = plan(config, targets, fire_minute(SYSTEM_CLOCK.now()), stopping)
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
            print_json(
                {"ok": True, "standby": decided.reason, "snapshot": None, "destinations": []}
            )
        else:
            print(f"standby: {decided.reason}; no snapshot taken")
        return ExitCode.OK
    if args.output == "json":
        print_json(_result_json(result))
    elif result.manifest is not None:
        print(
            f"snapshot {result.manifest.snapshot}: revision {result.manifest.revision}, "
            f"{result.manifest.size} bytes, {result.duration:.1f} s"
        )
        for d in result.destinations:
            outcome = "ok" if d.ok else ("left to another run: " if d.busy else "FAILED: ")
            print(f"  {d.name}: {outcome if d.ok else outcome + (d.error or '')}")
    else:
        print_error(args, f"backup failed at {result.failed_stage}: {result.error}")
    return result.exit_code


def _result_json(result: CycleResult) -> dict[str, object]:
    return {
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
