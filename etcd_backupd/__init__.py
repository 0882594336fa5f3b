"""etcd-backupd: scheduled, verified backups of etcd v3."""

# the single source of the version: pyproject.toml reads it from here (looking it up in the
# installed metadata instead costs every command ~30 ms of start-up)
__version__ = "0.1.0"
