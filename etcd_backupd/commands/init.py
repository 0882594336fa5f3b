"""`etcd-backupd init`: write a commented config, for the etcd found on this host with --detect."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from ..clock import SYSTEM_CLOCK
from ..errors import BackupError, ExitCode
from .common import write_new_private


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "init",
        help="write a config file, for the local etcd with --detect",
        description="Write a commented config (to stdout, or --output FILE). With --detect, "
        "for the etcd found on this host: a kubeadm static pod manifest, an etcd systemd unit "
        "or environment file (kubeasz and distribution packages), or ETCDCTL_* variables, in "
        "that order; a loopback client URL is preferred and set as local_endpoint. What was "
        "found where is said on stderr.",
    )
    parser.add_argument(
        "--detect", action="store_true", help="find the local etcd and configure for it"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="read the host's files under this directory (a copy of a node's /etc)",
    )
    parser.add_argument(
        "--output", "-o", type=Path, help="write the config here (never over an existing file)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..detect import detect, render

    found = None
    if args.detect:
        detection = detect(args.root, os.environ)
        for line in detection.report:
            print(f"init: {line}", file=sys.stderr)
        found = detection.found
        if found is None or not found.endpoints:
            raise BackupError(
                f"no etcd found under {args.root}: no kubeadm manifest, etcd unit or environment "
                "file, and no ETCDCTL_ENDPOINTS; run `etcd-backupd init` for a config to fill in "
                "by hand"
            )
        print(
            f"init: etcd at {', '.join(found.endpoints)}"
            + (f" (this host's member: {found.local_endpoint})" if found.local_endpoint else ""),
            file=sys.stderr,
        )
    text = render(found, host=socket.gethostname(), now=SYSTEM_CLOCK.now())
    if args.output is None:
        sys.stdout.write(text)
        return ExitCode.OK
    write_new_private(args.output, text)
    print(
        f"init: wrote {args.output}; check it with: etcd-backupd check-config --config "
        f"{args.output}",
        file=sys.stderr,
    )
    return ExitCode.OK
