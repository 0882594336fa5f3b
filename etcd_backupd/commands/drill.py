"""`etcd-backupd drill`: restore the newest backups into throwaway members to prove they
restore."""

from __future__ import annotations

import argparse

from ..clock import SYSTEM_CLOCK
from ..errors import ExitCode
from .common import chosen, cluster_option, config_option, identities, identity_option, our_cluster


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "drill",
        help="prove the newest backups restore",
        description="Restore the newest backup of each destination into a throwaway etcd on "
        "unix sockets in a private directory, check its revision and key count against the "
        "manifest and that [drill] expect_prefixes hold keys, then delete it. Exits 0 only if "
        "every drill passed.",
    )
    config_option(parser)
    parser.add_argument("--destination", "-d", help="only this destination")
    cluster_option(parser)
    identity_option(parser, ", else [drill] identity_file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..destinations import build
    from ..drill import drill
    from ..drill_record import record_result
    from ..notify import Notifications
    from ..restore import find_tools

    config = load_config(args.config)
    tools = find_tools(config.drill.bin_dir)
    keys = identities(args, config.drill.identity_file)
    cluster = our_cluster(config, args.cluster)
    now = SYSTEM_CLOCK.now()
    notifications = Notifications(config.notify, cluster=config.etcd.cluster_name)
    results = []
    for settings in chosen(config, args.destination):
        results.append(
            drill(
                build(settings),
                tools,
                config.drill.expect_prefixes,
                cluster=cluster,
                now=now,
                credentials=config.etcd.credentials,
                identities=keys,
            )
        )
        record_result(config.state_dir, results[-1], SYSTEM_CLOCK.now())
        notifications.drill_finished(results[-1])
    notifications.close()
    for result in results:
        verdict = "passed" if result.ok else f"FAILED: {result.error}"
        print(
            f"{result.destination}: drill of {result.snapshot or '-'} {verdict} "
            f"({result.seconds:.1f} s)"
        )
    failed = {r.exit_code for r in results if not r.ok}
    # a backup that failed its checks outweighs one no identity given could open
    return ExitCode.OK if not failed else min(failed)
