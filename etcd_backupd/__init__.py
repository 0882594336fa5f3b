"""etcd-backupd: scheduled, verified backups of etcd v3."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("etcd-backupd")
except PackageNotFoundError:
    __version__ = "0.0.0+unknown"
