"""`etcd-backupd diff`: the keys added, removed and changed between two snapshot files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ExitCode
from .common import identities, identity_option, kv_json, output_option, print_json


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "diff",
        help="what changed in the cluster between two snapshots",
        description="List keys added, removed and changed between two snapshot files.",
    )
    parser.add_argument("old", type=Path, help="the older snapshot")
    parser.add_argument("new", type=Path, help="the newer snapshot")
    parser.add_argument("--prefix", default="", help="only keys starting with this")
    identity_option(parser)
    output_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..compression import plain_snapshot
    from ..snapshot.keyspace import diff
    from ..snapshot.status import verify_snapshot

    keys = identities(args)
    with (
        plain_snapshot(args.old, identities=keys) as old,
        plain_snapshot(args.new, identities=keys) as new,
    ):
        verify_snapshot(old)
        verify_snapshot(new)
        changes = diff(old, new, prefix=args.prefix.encode())
    if args.output == "json":
        print_json(
            {
                "added": [kv_json(kv) for kv in changes.added],
                "removed": [kv_json(kv) for kv in changes.removed],
                "changed": [{"old": kv_json(a), "new": kv_json(b)} for a, b in changes.changed],
            }
        )
        return ExitCode.OK
    for mark, kvs in (("+", changes.added), ("-", changes.removed)):
        for kv in kvs:
            print(f"{mark} {kv.key.decode(errors='backslashreplace')}")
    for _, after in changes.changed:
        print(f"~ {after.key.decode(errors='backslashreplace')}")
    print(
        f"{len(changes.added)} added, {len(changes.removed)} removed, "
        f"{len(changes.changed)} changed",
        file=sys.stderr,
    )
    return ExitCode.OK
