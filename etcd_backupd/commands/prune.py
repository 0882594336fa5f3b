"""`etcd-backupd prune`: apply each destination's retention policy to this cluster's backups."""

from __future__ import annotations

import argparse

from ..clock import SYSTEM_CLOCK
from ..errors import ExitCode
from .common import (
    chosen,
    cluster_option,
    config_option,
    our_cluster,
    output_option,
    print_json,
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "prune",
        help="apply the retention policy now",
        description="Apply each destination's retention policy to this cluster's backups: print "
        "every snapshot with keep or delete and the rule that decided, then delete (unless "
        "--dry-run). The newest verified snapshot is never deleted; other clusters' backups, "
        "snapshots without a manifest (unless --orphans) and objects that are not "
        "etcd-backupd's are never touched.",
    )
    config_option(parser)
    output_option(parser)
    parser.add_argument("--destination", "-d", help="only this destination")
    parser.add_argument("--dry-run", "-n", action="store_true", help="decide, delete nothing")
    parser.add_argument(
        "--orphans",
        action="store_true",
        help="also remove this cluster's snapshots without a valid manifest, and manifests "
        "without a snapshot, older than a day (never done otherwise)",
    )
    cluster_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..destinations import build
    from ..prune import lock_period, policy_for, prune

    config = load_config(args.config)
    now = SYSTEM_CLOCK.now()
    cluster = our_cluster(config, args.cluster)
    results = [
        prune(
            build(d),
            policy_for(config, d),
            now=now,
            cluster=cluster,
            lock=lock_period(d),
            dry_run=args.dry_run,
            orphans=args.orphans,
        )
        for d in chosen(config, args.destination)
    ]
    if args.output == "json":
        print_json(
            {
                r.destination: {
                    "dry_run": r.dry_run,
                    "cluster": cluster.name,
                    "orphans": list(r.orphans),
                    "orphans_deleted": list(r.orphans_deleted),
                    "snapshots": [
                        {
                            "snapshot": d.snapshot.name,
                            "created": d.snapshot.created.isoformat(),
                            "action": "keep" if d.keep else "delete",
                            "reasons": list(d.reasons),
                        }
                        for d in r.decisions
                    ],
                }
                for r in results
            }
        )
        return ExitCode.OK
    for r in results:
        verb = "would delete" if r.dry_run else "deleted"
        print(f"{r.destination}: cluster {cluster.name}: keep {r.kept}, {verb} {len(r.deleted)}")
        for d in r.decisions:
            action = "keep  " if d.keep else "delete"
            print(f"  {action} {d.snapshot.name}  ({', '.join(d.reasons)})")
        removed = set(r.orphans_deleted)
        for name in r.orphans:
            if name in removed:
                print(f"  {'would remove' if r.dry_run else 'removed'} {name}  (orphan)")
            else:
                print(f"  leave  {name}  (no valid manifest: not a backup; see --orphans)")
    return ExitCode.OK
