"""The `etcd-backupd` command: argument parsing, exit codes and what is printed."""

from __future__ import annotations

import argparse
import ctypes
import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .commands import add_parsers
from .commands.common import (
    chosen,
    config_option,
    output_option,
)
from .commands.common import print_error as _print_error
from .commands.common import print_json as _print_json
from .errors import BackupError, ExitCode
from .logs import setup_logging
from .runbook import DEFAULT_BUMP_REVISION

# Each command imports what it uses: `verify` and `inspect` then start without gRPC and pydantic,
# and every command starts faster.
if TYPE_CHECKING:
    from .config import Config
    from .cycle import CycleResult
    from .manifest import Cluster

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
    add_parsers(commands, "inspect", "diff", "restore")
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

    plan_parser = commands.add_parser(
        "restore-plan",
        help="print the disaster-recovery runbook for a cluster",
        description="Print, as exact commands in order, how to restore the whole cluster from "
        "one snapshot: fetch, verify and restore it beside the data dir while etcd still runs, "
        "stop Kubernetes and etcd, swap the data dir, start etcd, wait for every member, check "
        "it, start Kubernetes again; for a kubeadm host (static pods) or a systemd one.",
    )
    plan_parser.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="NAME=PEER_URL",
        help="a member, e.g. etcd1=https://192.168.7.101:2380 (repeat for each); replaces the "
        "config's [restore] members",
    )
    plan_parser.add_argument(
        "--config",
        "-c",
        type=Path,
        help="take the members, TLS files and user from this config's [restore] and [etcd] "
        "tables; with --destination, the members read the snapshot through it (same path there)",
    )
    plan_parser.add_argument(
        "--client-url",
        action="append",
        default=[],
        metavar="NAME=CLIENT_URL",
        help="a member's client URL for the checks (default: its peer host, port 2379)",
    )
    plan_parser.add_argument(
        "--snapshot",
        required=True,
        help="a snapshot file on every member, or with --destination the snapshot's name there "
        "(or latest, which is resolved now so that every member restores the same one)",
    )
    plan_parser.add_argument(
        "--destination", "-d", help="every member fetches the snapshot from this destination"
    )
    plan_parser.add_argument(
        "--layout",
        choices=("kubeadm", "systemd"),
        help="kubeadm: etcd and the control plane are static pods; systemd: they are units "
        "(default: kubeadm when /etc/kubernetes/manifests/etcd.yaml exists here)",
    )
    plan_parser.add_argument("--data-dir", default="/var/lib/etcd", help="etcd's data dir")
    plan_parser.add_argument(
        "--data-dir-owner",
        metavar="USER[:GROUP]",
        help="chown the restored data dir to this (default: the old data dir's owner)",
    )
    plan_parser.add_argument(
        "--token", help="new cluster token (default: etcd-restore- and the snapshot's name)"
    )
    plan_parser.add_argument(
        "--etcd-bin-dir", help="where etcdutl (or 3.4's etcdctl) is on the members"
    )
    plan_parser.add_argument("--etcdctl", default="etcdctl", help="etcdctl for the checks")
    for flag, what in (("cacert", "CA bundle"), ("cert", "client certificate"), ("key", "key")):
        plan_parser.add_argument(
            f"--{flag}", help=f"{what} for the checks (default: [etcd] {flag})"
        )
    plan_parser.add_argument(
        "--health-timeout",
        type=int,
        default=300,
        help="seconds each member waits for every member to be healthy",
    )
    plan_parser.add_argument(
        "--bump-revision",
        type=int,
        default=DEFAULT_BUMP_REVISION,
        metavar="N",
        help="every member restores with --bump-revision N --mark-compacted, so that Kubernetes' "
        f"watches re-list (default: {DEFAULT_BUMP_REVISION}; needs etcdutl 3.5.10+ or 3.6)",
    )
    plan_parser.add_argument(
        "--no-bump",
        action="store_true",
        help="restore without a revision bump (for an older etcdutl; then restart the kubelets)",
    )
    plan_parser.add_argument(
        "--output",
        "-o",
        choices=("markdown", "script"),
        default="markdown",
        help="markdown prints the runbook; script writes restore-MEMBER.sh per member",
    )
    plan_parser.add_argument(
        "--script-dir", type=Path, default=Path("."), help="where --output script writes"
    )

    add_parsers(commands, "drill")

    run = commands.add_parser(
        "run",
        help="run as a service: back up on the configured schedule",
        description="Run as a long-lived service: take a backup at each fire time of the "
        "[schedule] cron expressions (and each destination's own), one at a time, retrying "
        "failures and catching up at start; serve /metrics, /healthz and /readyz; reload the "
        "config on SIGHUP; finish or cleanly abort the running backup on SIGTERM.",
    )
    config_option(run)
    add_parsers(commands, "verify", "list", "prune", "check_config", "init", "status")
    return parser


def _export_metrics(
    args: argparse.Namespace, config: Config, result: CycleResult | None, role: str
) -> None:
    """The daemon's metrics for a one-shot job; a failure here never hides the backup's own."""
    from prometheus_client import CollectorRegistry

    from .daemon import Schedule
    from .destinations import build
    from .etcd import identify_cluster
    from .manifest import Cluster
    from .metrics import BackupMetrics, push, write_textfile

    metrics = BackupMetrics(CollectorRegistry())
    manifest = result.manifest if result is not None else None
    cluster: Cluster | None = None
    if manifest is not None:
        cluster = Cluster(manifest.cluster_name, manifest.cluster_id)
    else:
        try:
            cluster = identify_cluster(config.etcd)
        except BackupError as exc:
            log.warning("metrics: %s", exc)
    held = {}
    for settings in config.destination:
        if cluster is None:
            break
        try:
            held[settings.name] = [m for m in build(settings).manifests() if cluster.owns(m)]
        except BackupError as exc:
            log.warning("metrics: cannot list destination %s: %s", settings.name, exc)
    metrics.load(held)
    metrics.set_role(role)
    # the timer or CronJob that runs `once` is expected to follow [schedule]
    metrics.set_schedule(*Schedule.of(config).intervals(datetime.now(UTC)))
    if result is not None:
        metrics.observe(result)
    if cluster is not None and cluster.id is not None:
        metrics.set_cluster(cluster.id)
    try:
        if args.textfile:
            write_textfile(metrics, args.textfile)
        if args.pushgateway:
            push(metrics, args.pushgateway, socket.gethostname())
    except BackupError as exc:
        log.error("%s", exc)


def cmd_once(args: argparse.Namespace) -> int:
    from .config import load_config
    from .coordination import fire_minute, plan
    from .cycle import run_cycle
    from .destinations import build
    from .notify import Notifications

    config = load_config(args.config)
    _warn_loose_permissions(config, args.config)
    targets = [build(d) for d in config.destination]
    # SIGTERM (a CronJob pod or a timer being stopped) and Ctrl-C end the run within about a
    # second, cleaning up after it, instead of killing it mid-write
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    decided = plan(config, targets, fire_minute(datetime.now(UTC)), stopping)
    if not decided.destinations:
        if args.output == "json":
            _print_json(
                {"ok": True, "standby": decided.reason, "snapshot": None, "destinations": []}
            )
        else:
            print(f"standby: {decided.reason}; no snapshot taken")
        if args.textfile or args.pushgateway:
            _export_metrics(args, config, None, decided.role)
        return ExitCode.OK
    notifications = Notifications(config.notify, cluster=config.etcd.cluster_name)
    try:
        notifications.cycle_started()
        result = run_cycle(config, destinations=decided.destinations, cancel=stopping)
        notifications.cycle_finished(result)
    finally:
        notifications.close()
    if args.textfile or args.pushgateway:
        _export_metrics(args, config, result, decided.role)
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


def cmd_restore_plan(args: argparse.Namespace) -> int:
    from .runbook import render_markdown, render_scripts

    plan_ = _runbook(args)
    if args.output == "markdown":
        print(render_markdown(plan_))
        return ExitCode.OK
    args.script_dir.mkdir(parents=True, exist_ok=True)
    for name, script in render_scripts(plan_).items():
        path = args.script_dir / f"restore-{name}.sh"
        _write_script(path, script)
        print(path)
    return ExitCode.OK


def _write_script(path: Path, script: str) -> None:
    """Write an executable script, never through a symlink planted under its name (a shared
    --script-dir such as /tmp): it runs as root on the members."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o755)
    except OSError as exc:
        reason = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
        raise BackupError(f"cannot write {path}: {reason}") from exc
    with os.fdopen(fd, "w") as handle:
        os.fchmod(fd, 0o755)
        handle.write(script)


def _runbook(args: argparse.Namespace) -> Any:
    from .restore import restore_token
    from .runbook import KUBEADM_ETCD_MANIFEST, EtcdAccess, Layout, Runbook, RunbookMember

    def pairs(items: list[str], what: str) -> dict[str, str]:
        found = {}
        for item in items:
            name, sep, url = item.partition("=")
            if not sep or not name or not url.startswith(("http://", "https://")):
                raise BackupError(f"{what} {item!r} is not NAME=URL")
            found[name] = url
        return found

    if args.health_timeout <= 0:
        raise BackupError("--health-timeout must be a positive number of seconds")
    if args.bump_revision <= 0:
        raise BackupError("--bump-revision must be a positive number (or give --no-bump)")
    peers = pairs(args.member, "--member")
    clients = pairs(args.client_url, "--client-url")
    config = None
    if args.config:
        from .config import load_config

        config = load_config(args.config)
        if not peers:
            peers = dict(config.restore.members)
            clients = {**config.restore.client_urls, **clients}
    if not peers:
        raise BackupError(
            "no members: give --member NAME=PEER_URL for each member, or --config with a "
            "[restore] members table"
        )
    members = []
    for name, peer in peers.items():
        host = peer.split("://", 1)[1].rsplit(":", 1)[0]
        scheme = peer.split("://", 1)[0]
        members.append(RunbookMember(name, peer, clients.get(name, f"{scheme}://{host}:2379")))
    source = _runbook_source(args, config)
    etcd = config.etcd if config else None

    def setting(given: str | None, configured: Path | str | None) -> str | None:
        return given or (str(configured) if configured is not None else None)

    access = EtcdAccess(
        cacert=setting(args.cacert, etcd.cacert if etcd else None),
        cert=setting(args.cert, etcd.cert if etcd else None),
        key=setting(args.key, etcd.key if etcd else None),
        user=etcd.username if etcd else None,
        password_file=setting(None, etcd.password_file if etcd and etcd.username else None),
    )
    layout: Layout = args.layout or (
        "kubeadm" if Path(KUBEADM_ETCD_MANIFEST).exists() else "systemd"
    )
    return Runbook(
        members=members,
        source=source,
        layout=layout,
        data_dir=args.data_dir,
        token=args.token or restore_token(source.snapshot),
        etcdctl=args.etcdctl,
        etcd_bin_dir=args.etcd_bin_dir,
        data_dir_owner=args.data_dir_owner,
        access=access,
        health_timeout=args.health_timeout,
        bump_revision=0 if args.no_bump else args.bump_revision,
    )


def _runbook_source(args: argparse.Namespace, config: Config | None) -> Any:
    """The snapshot every member restores: a name in a destination is resolved here, once."""
    from .runbook import SnapshotSource

    if args.destination is None:
        return SnapshotSource(args.snapshot)
    if config is None:
        raise BackupError("--destination needs --config, the config that names it")
    from .destinations import build
    from .restore import find_snapshot

    (settings,) = chosen(config, args.destination)
    wanted = find_snapshot(
        build(settings).manifests(),
        args.snapshot,
        settings.name,
        cluster=config.etcd.cluster_name,
        now=datetime.now(UTC),
    )
    return SnapshotSource(wanted.snapshot, str(args.config.absolute()), settings.name)


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


COMMANDS = {
    "once": cmd_once,
    "run": cmd_run,
    "restore-plan": cmd_restore_plan,
}


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
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        return int(handler(args))
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
