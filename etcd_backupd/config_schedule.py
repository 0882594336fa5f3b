"""When backups are taken and how long they are kept: the [schedule] and [retention] tables
(a destination may carry its own retention and cron)."""

from __future__ import annotations

from pydantic import Field, field_validator

from .config_base import DAY, Strict, validate_cron
from .retention import parse_duration

DEFAULT_CRON = "0 */12 * * *"


class ScheduleConfig(Strict):
    cron: str | list[str] = Field(
        DEFAULT_CRON,
        description="When `etcd-backupd run` takes a backup: a 5-field cron expression (minute "
        'hour day month weekday) or a macro such as "@daily", or a list of them, read as cron '
        "and Kubernetes read them (weekday 0 and 7 are Sunday; with both day fields restricted, "
        "either one matching is enough). `etcd-backupd check-config` prints the next three fire "
        "times.",
    )
    timezone: str = Field("UTC", description="Time zone the cron expressions are read in.")
    jitter: float = Field(
        0.0,
        ge=0,
        le=DAY,
        description="Wait up to this many seconds after each fire time, at random, so a fleet "
        "does not hit S3 at once.",
    )
    retry_attempts: int = Field(
        3,
        ge=0,
        le=100,
        description="A failed cycle is retried this many times before the next fire time.",
    )
    retry_backoff: float = Field(
        60.0,
        gt=0,
        le=DAY,
        description="Seconds before the first retry of a failed cycle, doubled for each further "
        "retry.",
    )
    catch_up: bool = Field(
        True,
        description="At start, back up at once if the newest backup is older than the last fire "
        "time.",
    )
    shutdown_timeout: float = Field(
        300.0,
        ge=0,
        le=DAY,
        description="On SIGTERM or SIGINT, a running cycle may take this many seconds to finish "
        "before it is aborted cleanly (no partial file, no multipart upload left).",
    )
    standby_grace: float = Field(
        120.0,
        ge=0,
        le=DAY,
        description="With coordination, seconds a standby host waits for the leader's "
        "snapshot of a fire time before it takes one itself.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {zone!r} (e.g. UTC, Europe/Berlin)") from exc
        return zone

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str | list[str]) -> str | list[str]:
        expressions = [cron] if isinstance(cron, str) else cron
        if not expressions:
            raise ValueError("needs at least one cron expression")
        for expression in expressions:
            validate_cron(expression)
        return cron


class RetentionConfig(Strict):
    """Which snapshots survive pruning (restic `forget` semantics). No rule set: keep
    everything."""

    keep_last: int | None = Field(
        None, ge=0, le=1_000_000, description="Keep the N newest snapshots.", examples=[6]
    )
    keep_hourly: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Keep the newest snapshot in each of the last N hours.",
        examples=[24],
    )
    keep_daily: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Keep the newest snapshot in each of the last N days.",
        examples=[7],
    )
    keep_weekly: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Keep the newest snapshot in each of the last N weeks.",
        examples=[4],
    )
    keep_monthly: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Keep the newest snapshot in each of the last N months.",
        examples=[12],
    )
    keep_yearly: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Keep the newest snapshot in each of the last N years.",
        examples=[2],
    )
    keep_within: str | None = Field(
        None,
        description="Keep all snapshots this close to the newest one.",
        examples=["14d"],
    )

    @field_validator("keep_within")
    @classmethod
    def _duration(cls, text: str | None) -> str | None:
        if text is not None:
            parse_duration(text)
        return text
