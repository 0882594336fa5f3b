"""`etcd-backupd inspect`: the live keys of a snapshot file, as etcdctl would print them from the
restored cluster."""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackupError, ExitCode, SnapshotInvalid
from .common import identities, identity_option, kv_json, output_option, print_json

if TYPE_CHECKING:
    from ..snapshot.keyspace import KeyValue


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "inspect",
        help="list the keys a snapshot holds, without restoring it",
        description="Print the live keys of a snapshot file (plain, compressed or encrypted) as "
        "'etcdctl get --prefix' would on the restored cluster, in pure Python; --output json "
        "as 'etcdctl get -w json' (base64 keys and values).",
    )
    parser.add_argument("file", type=Path, help="snapshot file")
    parser.add_argument("key", nargs="?", help="only this key")
    parser.add_argument("--prefix", default="", help="only keys starting with this")
    parser.add_argument("--keys-only", action="store_true", help="print keys, not values")
    parser.add_argument(
        "--print-value-only",
        action="store_true",
        help="write KEY's value to stdout as raw bytes, nothing else (for 'etcdctl put KEY < F')",
    )
    parser.add_argument(
        "--revision", type=int, help="the keyspace as of this revision (default: the newest)"
    )
    identity_option(parser)
    output_option(parser)
    parser.set_defaults(handler=run)


def _kvs_json(kvs: list[KeyValue], *, with_value: bool = True) -> dict[str, Any]:
    """The body of `etcdctl get -w json` without its header, which only a live member has."""
    if not kvs:
        return {}
    return {"kvs": [kv_json(kv, with_value=with_value) for kv in kvs], "count": len(kvs)}


def run(args: argparse.Namespace) -> int:
    from ..compression import plain_snapshot
    from ..snapshot.keyspace import live_key_names, live_keys
    from ..snapshot.status import check_trailer

    if args.print_value_only and args.key is None:
        raise BackupError("--print-value-only needs a KEY: the value of one key is written raw")
    if args.key is not None and args.prefix:
        raise BackupError("give a KEY or --prefix, not both")
    prefix = (args.key if args.key is not None else args.prefix).encode()
    names_only = args.keys_only and args.output == "text" and args.key is None
    with (
        plain_snapshot(args.file, identities=identities(args)) as plain,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        # the SHA-256 proves the file is what etcd sent; the walk checks every page it reads
        trailer = pool.submit(check_trailer, plain)
        try:
            if names_only:
                names = live_key_names(plain, prefix=prefix, revision=args.revision)
                # the layout of 'etcdctl get --prefix --keys-only': each key, then an empty line;
                # laid out while the SHA-256 may still run, written only once it matched
                listing = b"\n\n".join([*names, b""])
            else:
                keys = live_keys(plain, prefix=prefix, revision=args.revision)
        except SnapshotInvalid:
            trailer.result()  # a damaged trailer is the surer diagnosis
            raise
        trailer.result()
    out = sys.stdout.buffer
    if names_only:
        out.write(listing)
        out.flush()
        return ExitCode.OK
    if args.key is not None:
        keys = [kv for kv in keys if kv.key == prefix]
        if not keys:
            when = f" at revision {args.revision}" if args.revision is not None else ""
            raise BackupError(f"{args.file}: holds no key {args.key!r}{when}")
    if args.print_value_only:
        # no newline: redirected to a file, the value is byte for byte what etcd held
        out.write(keys[0].value)
    elif args.output == "json":
        print_json(_kvs_json(keys, with_value=not args.keys_only))
    elif args.keys_only:
        out.write(keys[0].key + b"\n\n")
    else:
        # the layout of 'etcdctl get --prefix': a key, then its value, each on a line
        out.write(b"".join(kv.key + b"\n" + kv.value + b"\n" for kv in keys))
    out.flush()
    return ExitCode.OK
