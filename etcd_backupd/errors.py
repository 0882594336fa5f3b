"""Errors meant for the operator: each carries one line that says what went wrong and what to do,
and the exit code the process ends with."""

from enum import IntEnum
from typing import ClassVar


class ExitCode(IntEnum):
    """Every code the tool exits with; README's list of exit codes is checked against it."""

    OK = 0
    ERROR = 1  # any other error the message explains
    CONFIG = 2
    ETCD = 3
    SNAPSHOT_INVALID = 4
    DESTINATION = 5
    DRILL_FAILED = 6
    STALE = 7  # `status`: a destination's newest backup is too old, or it holds none
    IDENTITY = 8  # an encrypted backup, and no age identity given can decrypt it
    INTERNAL = 70  # EX_SOFTWARE: a bug
    TEMPFAIL = 75  # EX_TEMPFAIL: another run holds the lock or every destination
    INTERRUPTED = 130  # 128 + SIGINT, also for SIGTERM: the run removed what it had written


class BackupError(Exception):
    """Base of every error the CLI prints as one line instead of a traceback."""

    exit_code: ClassVar[ExitCode] = ExitCode.ERROR


class ConfigError(BackupError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = ExitCode.CONFIG


class EtcdError(BackupError):
    """No etcd member could serve a snapshot (unreachable, TLS, auth, stalled stream)."""

    exit_code = ExitCode.ETCD


class SnapshotInvalid(BackupError):
    """A snapshot failed verification: damaged, truncated or not an etcd snapshot at all."""

    exit_code = ExitCode.SNAPSHOT_INVALID


class DestinationError(BackupError):
    """A destination could not store, list, fetch or delete a backup."""

    exit_code = ExitCode.DESTINATION


class Cancelled(BackupError):
    """A cycle was aborted on shutdown; everything it had written was removed."""

    exit_code = ExitCode.INTERRUPTED


class DestinationBusy(BackupError):
    """Another run of the tool is writing into the destination; this run leaves it alone.
    EX_TEMPFAIL: nothing is wrong, and the other run takes the backup."""

    exit_code = ExitCode.TEMPFAIL


class IdentityError(BackupError):
    """An encrypted backup that no identity given can decrypt: none given, an unreadable or
    malformed identity file, or identities whose recipients it was not encrypted to."""

    exit_code = ExitCode.IDENTITY
