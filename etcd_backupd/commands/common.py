"""What several commands share: the --config, --output, --cluster and --identity options, the
destinations a command acts on, and how errors and JSON are printed."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..clock import SYSTEM_CLOCK
from ..errors import BackupError
from ..logs import error_line

if TYPE_CHECKING:
    from ..config import Config
    from ..config_destinations import DestinationConfig
    from ..encryption import Identity
    from ..manifest import Cluster
    from ..snapshot.keyspace import KeyValue

log = logging.getLogger(__name__)
# an empty ETCD_BACKUPD_CONFIG is unset, not the working directory
DEFAULT_CONFIG = Path(os.environ.get("ETCD_BACKUPD_CONFIG") or "/etc/etcd-backupd/config.toml")


def config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"TOML config file (default: {DEFAULT_CONFIG}; or set ETCD_BACKUPD_CONFIG)",
    )


def output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", "-o", choices=("text", "json"), default="text", help="output format"
    )


def cluster_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        metavar="NAME",
        help="act on this cluster's backups (the cluster part of snapshot names; default: "
        "etcd.cluster_name, else the cluster ID etcd reports)",
    )


def identity_option(parser: argparse.ArgumentParser, fallback: str = "") -> None:
    parser.add_argument(
        "--identity",
        action="append",
        type=Path,
        metavar="FILE",
        help="age identity file to decrypt an encrypted backup with (repeatable); default: the "
        f"files ETCD_BACKUPD_AGE_IDENTITY_FILE names (':'-separated){fallback}",
    )


def identities(args: argparse.Namespace, fallback: Path | None = None) -> list[Identity]:
    """The identities of --identity, else of the files ETCD_BACKUPD_AGE_IDENTITY_FILE names,
    else of `fallback` (a config's [drill] identity_file); a file that holds none, or cannot be
    read, is an IdentityError."""
    from ..encryption import identity_files, load_identities

    paths = identity_files(args.identity, os.environ)
    if not paths and fallback is not None:
        paths = [fallback]
    return load_identities(paths)


def load_service_config(path: Path) -> Config:
    """The config a backing-up command runs on, with a warning for each file it names that
    others can read or change (the config itself, keys, passwords)."""
    from ..config import load_config
    from ..config_files import loose_permissions

    config = load_config(path)
    for warning in loose_permissions(config, path):
        log.warning("%s", warning)
    return config


def write_new_private(path: Path, text: str) -> None:
    """Write `text` to a new file only its owner reads (0600), never over an existing file or
    through a symlink planted under its name."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise BackupError(f"{path} exists: remove it or choose another --output") from None
    except OSError as exc:
        raise BackupError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def print_error(args: argparse.Namespace, text: str) -> None:
    print(error_line(args.log_format, text, SYSTEM_CLOCK.now()), file=sys.stderr)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def kv_json(kv: KeyValue, *, with_value: bool = True) -> dict[str, Any]:
    """A key as `etcdctl get -w json` writes it: base64 bytes, and zero fields left out."""
    fields: dict[str, Any] = {
        "key": base64.b64encode(kv.key).decode(),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    }
    if with_value and kv.value:
        fields["value"] = base64.b64encode(kv.value).decode()
    if kv.lease:
        fields["lease"] = kv.lease
    return fields


def chosen(config: Config, name: str | None) -> list[DestinationConfig]:
    """The configured destinations called `name`, or all of them when it is None."""
    found = [d for d in config.destination if name in (None, d.name)]
    if not found:
        names = ", ".join(d.name for d in config.destination)
        raise BackupError(f"no destination named {name!r}; configured: {names}")
    return found


def our_cluster(config: Config, named: str | None) -> Cluster:
    """The cluster whose backups a command acts on: --cluster, else etcd.cluster_name, else the
    cluster ID etcd reports (the name its backups carry then)."""
    from ..etcd import identify_cluster
    from ..manifest import Cluster

    name = named or config.etcd.cluster_name
    if name is not None:
        return Cluster(name)
    return identify_cluster(config.etcd)
