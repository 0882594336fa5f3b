"""The files a config names, checked as the daemon will use them: each one there and readable,
and the secrets among them (and the config itself) readable by their owner only."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .config_destinations import S3Destination
from .errors import ConfigError


@dataclass(frozen=True)
class Referenced:
    setting: str
    path: Path
    secret: bool
    directory: bool = False


def referenced(config: Config) -> list[Referenced]:
    """Every file and directory the config names for reading, with the setting that names it."""
    found = [
        Referenced("etcd.cacert", config.etcd.cacert, False) if config.etcd.cacert else None,
        Referenced("etcd.cert", config.etcd.cert, False) if config.etcd.cert else None,
        Referenced("etcd.key", config.etcd.key, True) if config.etcd.key else None,
        Referenced("etcd.password_file", config.etcd.password_file, True)
        if config.etcd.password_file
        else None,
        Referenced("metrics.cert", config.metrics.cert, False) if config.metrics.cert else None,
        Referenced("metrics.key", config.metrics.key, True) if config.metrics.key else None,
        Referenced("metrics.client_ca", config.metrics.client_ca, False)
        if config.metrics.client_ca
        else None,
        Referenced("drill.bin_dir", config.drill.bin_dir, False, directory=True)
        if config.drill.bin_dir
        else None,
        Referenced("drill.identity_file", config.drill.identity_file, True)
        if config.drill.identity_file
        else None,
    ]
    for index, destination in enumerate(config.destination):
        if not isinstance(destination, S3Destination):
            continue
        where = f"destination[{index}]"
        if destination.ca_bundle:
            found.append(Referenced(f"{where}.ca_bundle", destination.ca_bundle, False))
        if destination.secret_access_key_file:
            found.append(
                Referenced(
                    f"{where}.secret_access_key_file", destination.secret_access_key_file, True
                )
            )
    return [item for item in found if item is not None]


def _problem(item: Referenced) -> str | None:
    kind = "directory" if item.directory else "file"
    try:
        # non-blocking: a FIFO planted under the name must not hang the check
        fd = os.open(item.path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return f"{item.setting}: cannot read {item.path}: {exc.strerror}"
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if (stat.S_ISDIR(mode) if item.directory else stat.S_ISREG(mode)) is False:
        return f"{item.setting}: {item.path} is not a {kind}"
    return None


def check_referenced(config: Config) -> None:
    """Raise one ConfigError naming every file the config names that is missing or unreadable,
    then check that the etcd and S3 credentials can be read whole."""
    problems = [p for p in map(_problem, referenced(config)) if p is not None]
    if problems:
        raise ConfigError("; ".join(problems))
    config.etcd.credentials()
    for destination in config.destination:
        if isinstance(destination, S3Destination):
            destination.secret_access_key()


def loose_permissions(config: Config, config_path: Path) -> list[str]:
    """A warning for the config and each secret it names that others than the owner may read."""
    secrets = [Referenced("config", config_path, True)]
    secrets += [item for item in referenced(config) if item.secret]
    warnings = []
    for item in secrets:
        try:
            mode = item.path.stat().st_mode
        except OSError:
            continue
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            warnings.append(
                f"{item.setting}: {item.path} has mode {stat.S_IMODE(mode):04o}, so other users "
                f"may read it; run chmod 600 {item.path}"
            )
    return warnings
