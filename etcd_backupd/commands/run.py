"""`etcd-backupd run`: the long-lived service (daemon.py), backing up on the schedule."""

from __future__ import annotations

import argparse

from .common import config_option, load_service_config


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "run",
        help="run as a service: back up on the configured schedule",
        description="Run as a long-lived service: take a backup at each fire time of the "
        "[schedule] cron expressions (and each destination's own), one at a time, retrying "
        "failures and catching up at start; serve /metrics, /healthz and /readyz; reload the "
        "config on SIGHUP; finish or cleanly abort the running backup on SIGTERM.",
    )
    config_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..daemon import Daemon

    return Daemon(args.config, load_service_config(args.config)).run()
