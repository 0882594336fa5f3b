"""`etcd-backupd restore`: restore a snapshot file, or a backup in a destination, into an etcd
data directory with etcd's own tools."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..clock import SYSTEM_CLOCK
from ..errors import BackupError, ExitCode
from .common import chosen, identities, identity_option


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "restore",
        help="restore a snapshot into an etcd data directory",
        description="Fetch (from a destination), decompress, verify, then run etcd's own "
        "restore (etcdutl, or etcdctl for 3.4) into --data-dir. A snapshot that fails "
        "verification is refused before anything on disk is touched; a non-empty data "
        "directory is refused, or with --force moved aside under a timestamped name.",
    )
    parser.add_argument("file", type=Path, nargs="?", help="a snapshot file")
    parser.add_argument("--config", "-c", type=Path, help="config naming the destinations")
    parser.add_argument("--destination", "-d", help="restore from this destination")
    parser.add_argument(
        "--snapshot", default="latest", help="snapshot name in the destination, or latest"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="the data dir to restore into (a non-empty one is refused unless --force)",
    )
    parser.add_argument("--name", default="default", help="this member's name")
    parser.add_argument(
        "--initial-advertise-peer-urls",
        default="http://localhost:2380",
        help="this member's peer URL (default: %(default)s)",
    )
    parser.add_argument("--initial-cluster", help="default: NAME=PEER_URL (one member)")
    parser.add_argument(
        "--initial-cluster-token",
        help="the restored cluster's token (default: etcd-restore- and the snapshot's name, so "
        "every member parser one snapshot gets the same token)",
    )
    parser.add_argument("--force", action="store_true", help="move a non-empty data dir aside")
    parser.add_argument("--etcd-bin-dir", type=Path, help="where etcdutl/etcdctl are")
    parser.add_argument(
        "--cluster",
        metavar="NAME",
        help="with --snapshot latest in a destination several clusters share: whose latest "
        "(the cluster part of snapshot names; default: etcd.cluster_name)",
    )
    parser.add_argument(
        "--bump-revision",
        type=int,
        default=0,
        metavar="N",
        help="raise the restored revision by N, past any a client saw (with --mark-compacted; "
        "etcdutl 3.5.10+ or 3.6)",
    )
    parser.add_argument(
        "--mark-compacted",
        action="store_true",
        help="mark the bumped revision compacted, so that old watches are told to re-list",
    )
    identity_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..destinations import build
    from ..restore import Member, find_tools, restore, restore_from_destination, restore_token

    if args.bump_revision < 0 or (args.bump_revision > 0) != args.mark_compacted:
        # etcdutl refuses one without the other too, but only after the data dir moved aside
        raise BackupError(
            "--bump-revision N (N > 0) and --mark-compacted go together: give both, or neither"
        )
    config = load_config(args.config) if args.config else None
    bin_dir = args.etcd_bin_dir or (config.drill.bin_dir if config else None)
    tools = find_tools(bin_dir)
    member = Member(args.name, args.initial_advertise_peer_urls, args.data_dir)
    cluster = args.initial_cluster or f"{args.name}={args.initial_advertise_peer_urls}"
    now = SYSTEM_CLOCK.now()
    if args.file is not None:
        token = args.initial_cluster_token or restore_token(args.file.name)
        status, tool = restore(
            args.file,
            member,
            cluster,
            token,
            tools,
            force=args.force,
            now=now,
            bump_revision=args.bump_revision,
            identities=identities(args),
        )
    else:
        if config is None or args.destination is None:
            raise BackupError("name a snapshot FILE, or --config and --destination")
        (settings,) = chosen(config, args.destination)
        restored = restore_from_destination(
            build(settings),
            args.snapshot,
            member,
            cluster,
            tools,
            token=args.initial_cluster_token,
            cluster=args.cluster or config.etcd.cluster_name,
            force=args.force,
            now=now,
            bump_revision=args.bump_revision,
            identities=identities(args),
        )
        status, tool, token = restored.status, restored.tool, restored.token
    bumped = (
        f", bumped by {args.bump_revision} to {status.revision + args.bump_revision} and marked "
        "compacted"
        if args.bump_revision
        else ""
    )
    print(
        f"restored revision {status.revision} ({status.live_keys} keys){bumped} into "
        f"{args.data_dir} with {tool.description}, cluster token {token}"
    )
    return ExitCode.OK
