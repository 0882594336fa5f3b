"""`etcd-backupd restore-plan`: the disaster-recovery runbook of a cluster, as Markdown or as one
script per member."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..clock import SYSTEM_CLOCK
from ..errors import BackupError, ExitCode
from ..runbook import (
    DEFAULT_BUMP_REVISION,
    KUBEADM_ETCD_MANIFEST,
    EtcdAccess,
    Layout,
    Runbook,
    SnapshotSource,
    parse_urls,
    render_markdown,
    render_scripts,
    runbook_members,
)
from .common import chosen

if TYPE_CHECKING:
    from ..config import Config


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "restore-plan",
        help="print the disaster-recovery runbook for a cluster",
        description="Print, as exact commands in order, how to restore the whole cluster from "
        "one snapshot: fetch, verify and restore it beside the data dir while etcd still runs, "
        "stop Kubernetes and etcd, swap the data dir, start etcd, wait for every member, check "
        "it, start Kubernetes again; for a kubeadm host (static pods) or a systemd one.",
    )
    parser.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="NAME=PEER_URL",
        help="a member, e.g. etcd1=https://192.168.7.101:2380 (repeat for each); replaces the "
        "config's [restore] members",
    )
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        help="take the members, TLS files and user from this config's [restore] and [etcd] "
        "tables; with --destination, the members read the snapshot through it (same path there)",
    )
    parser.add_argument(
        "--client-url",
        action="append",
        default=[],
        metavar="NAME=CLIENT_URL",
        help="a member's client URL for the checks (default: its peer host, port 2379)",
    )
    parser.add_argument(
        "--snapshot",
        required=True,
        help="a snapshot file on every member, or with --destination the snapshot's name there "
        "(or latest, which is resolved now so that every member restores the same one)",
    )
    parser.add_argument(
        "--destination", "-d", help="every member fetches the snapshot from this destination"
    )
    parser.add_argument(
        "--layout",
        choices=("kubeadm", "systemd"),
        help="kubeadm: etcd and the control plane are static pods; systemd: they are units "
        "(default: kubeadm when /etc/kubernetes/manifests/etcd.yaml exists here)",
    )
    parser.add_argument("--data-dir", default="/var/lib/etcd", help="etcd's data dir")
    parser.add_argument(
        "--data-dir-owner",
        metavar="USER[:GROUP]",
        help="chown the restored data dir to this (default: the old data dir's owner)",
    )
    parser.add_argument(
        "--token", help="new cluster token (default: etcd-restore- and the snapshot's name)"
    )
    parser.add_argument("--etcd-bin-dir", help="where etcdutl (or 3.4's etcdctl) is on the members")
    parser.add_argument("--etcdctl", default="etcdctl", help="etcdctl for the checks")
    for flag, what in (("cacert", "CA bundle"), ("cert", "client certificate"), ("key", "key")):
        parser.add_argument(f"--{flag}", help=f"{what} for the checks (default: [etcd] {flag})")
    parser.add_argument(
        "--health-timeout",
        type=int,
        default=300,
        help="seconds each member waits for every member to be healthy",
    )
    parser.add_argument(
        "--bump-revision",
        type=int,
        default=DEFAULT_BUMP_REVISION,
        metavar="N",
        help="every member restores with --bump-revision N --mark-compacted, so that Kubernetes' "
        f"watches re-list (default: {DEFAULT_BUMP_REVISION}; needs etcdutl 3.5.10+ or 3.6)",
    )
    parser.add_argument(
        "--no-bump",
        action="store_true",
        help="restore without a revision bump (for an older etcdutl; then restart the kubelets)",
    )
    parser.add_argument(
        "--output",
        "-o",
        choices=("markdown", "script"),
        default="markdown",
        help="markdown prints the runbook; script writes restore-MEMBER.sh per member",
    )
    parser.add_argument(
        "--script-dir", type=Path, default=Path("."), help="where --output script writes"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
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


def _runbook(args: argparse.Namespace) -> Runbook:
    from ..restore import restore_token

    if args.health_timeout <= 0:
        raise BackupError("--health-timeout must be a positive number of seconds")
    if args.bump_revision <= 0:
        raise BackupError("--bump-revision must be a positive number (or give --no-bump)")
    peers = parse_urls(args.member, "--member")
    clients = parse_urls(args.client_url, "--client-url")
    config = None
    if args.config:
        from ..config import load_config

        config = load_config(args.config)
        if not peers:
            peers = dict(config.restore.members)
            clients = {**config.restore.client_urls, **clients}
    if not peers:
        raise BackupError(
            "no members: give --member NAME=PEER_URL for each member, or --config with a "
            "[restore] members table"
        )
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
        members=runbook_members(peers, clients),
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


def _runbook_source(args: argparse.Namespace, config: Config | None) -> SnapshotSource:
    """The snapshot every member restores: a name in a destination is resolved here, once."""
    if args.destination is None:
        return SnapshotSource(args.snapshot)
    if config is None:
        raise BackupError("--destination needs --config, the config that names it")
    from ..destinations import build
    from ..restore import find_snapshot

    (settings,) = chosen(config, args.destination)
    wanted = find_snapshot(
        build(settings).manifests(),
        args.snapshot,
        settings.name,
        cluster=config.etcd.cluster_name,
        now=SYSTEM_CLOCK.now(),
    )
    return SnapshotSource(wanted.snapshot, str(args.config.absolute()), settings.name)
