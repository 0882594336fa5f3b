"""Errors meant for the operator: each carries one line that says what went wrong and what to do."""


class BackupError(Exception):
    """Base of every error the CLI prints as one line instead of a traceback."""

    exit_code = 1


class ConfigError(BackupError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = 2


class EtcdError(BackupError):
    """No etcd member could serve a snapshot (unreachable, TLS, auth, stalled stream)."""

    exit_code = 3


class SnapshotInvalid(BackupError):
    """A snapshot failed verification: damaged, truncated or not an etcd snapshot at all."""

    exit_code = 4


class DestinationError(BackupError):
    """A destination could not store, list, fetch or delete a backup."""

    exit_code = 5


class Cancelled(BackupError):
    """A cycle was aborted on shutdown; everything it had written was removed."""

    exit_code = 130


class DestinationBusy(BackupError):
    """Another run of the tool is writing into the destination; this run leaves it alone.
    EX_TEMPFAIL: nothing is wrong, and the other run takes the backup."""

    exit_code = 75
