"""`etcd-backupd verify`: check a snapshot file without etcd and print its figures."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ExitCode, SnapshotInvalid
from .common import identities, identity_option, output_option, print_error, print_json

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..encryption import Identity
    from ..snapshot.status import SnapshotStatus


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "verify",
        help="check a snapshot file without etcd",
        description="Check a snapshot file (plain, compressed with zstd or gzip, encrypted with "
        "age, or both): its SHA-256 "
        "trailer and its bbolt structure, and print the revision, total keys, size, hash and "
        "(etcd 3.6) version 'etcdutl snapshot status' of the snapshot's etcd line would print, "
        "and the live keys a restore would hold. Exits 0 only for a sound snapshot.",
    )
    parser.add_argument("file", type=Path, help="snapshot file")
    identity_option(parser)
    output_option(parser)
    parser.set_defaults(handler=run)


def verify_file(path: Path, keys: Sequence[Identity] = ()) -> SnapshotStatus:
    """Verify a snapshot file as stored, compressed, encrypted (with `keys`) or not."""
    from ..compression import plain_snapshot
    from ..snapshot.status import verify_snapshot

    with plain_snapshot(path, identities=keys) as plain:
        return verify_snapshot(plain)


def run(args: argparse.Namespace) -> int:
    try:
        status = verify_file(args.file, identities(args))
    except SnapshotInvalid as exc:
        if args.output == "json":
            print_json({"valid": False, "file": str(args.file), "error": str(exc)})
        else:
            print_error(args, f"INVALID {args.file}: {exc}")
        return exc.exit_code
    if args.output == "json":
        print_json({"valid": True, "file": str(args.file), **status.to_dict()})
    else:
        print(f"OK {args.file}")
        # TOTAL KEYS as the etcdutl of the snapshot's line prints it, and how that line counts
        counted = (
            "user keys, as etcdutl 3.6+ counts them"
            if status.storage_version
            else "entries of every bucket, as etcdutl 3.4 and 3.5 count"
        )
        rows = [
            ("hash", f"{status.hash:x} ({status.hash})"),
            ("revision", status.revision),
            ("total keys", f"{status.total_keys} ({counted})"),
            ("live keys", status.live_keys),
            ("total size", status.total_size),
            ("version", status.storage_version or "none (before etcd 3.6)"),
            ("sha256", status.sha256),
        ]
        for label, value in rows:
            print(f"  {label:<11} {value}")
    return ExitCode.OK
