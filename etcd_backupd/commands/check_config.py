"""`etcd-backupd check-config`: validate a config file and say what it sets."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING

from ..clock import SYSTEM_CLOCK
from ..errors import BackupError, ExitCode
from .common import config_option, print_error

if TYPE_CHECKING:
    from ..config import Config


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check-config",
        help="validate a config file",
        description="Validate a config file and print what it sets, with the next three fire "
        "times of every schedule; exits 2 when it is invalid.",
    )
    config_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..config_files import check_referenced, loose_permissions

    config = load_config(args.config)
    check_referenced(config)
    for warning in [*loose_permissions(config, args.config), *config.plaintext_off_host()]:
        print_error(args, f"warning: {warning}")
    print(f"{args.config}: valid")
    for line in describe_config(config, SYSTEM_CLOCK.now()):
        print(f"  {line}")
    for line in _deletion_notes(config):
        print(f"  {line}")
    return ExitCode.OK


def _deletion_notes(config: Config) -> list[str]:
    """What a delete leaves behind in each destination (S3 bucket versioning), asked of the
    store itself."""
    from ..config_destinations import S3Destination
    from ..destinations import build

    notes = []
    for settings in config.destination:
        if isinstance(settings, S3Destination):
            # a note, not a backup: one request, so a store that never answers costs
            # check-config one read_timeout rather than max_attempts of them
            settings = settings.model_copy(update={"max_attempts": 1})
        try:
            note = build(settings).deletion_note()
        except BackupError as exc:
            note = f"cannot tell whether pruned backups stay as old versions: {exc}"
        if note:
            notes.append(f"destination {settings.name}: {note}")
    return notes


def _schedule_lines(label: str, cron: str | list[str], zone: str, now: datetime) -> list[str]:
    """What a schedule means: its expressions and its next three fire times in its zone."""
    from ..cron import CronSchedule

    expressions = [cron] if isinstance(cron, str) else cron
    fires = CronSchedule.parse(expressions, zone).fire_times(now, 3)
    return [
        f"{label}: {', '.join(expressions)} ({zone})",
        f"  next: {', '.join(fire.isoformat() for fire in fires)}",
    ]


def describe_config(config: Config, now: datetime) -> list[str]:
    lines = [f"etcd endpoints: {', '.join(config.etcd.endpoints)}"]
    zone = config.schedule.timezone
    lines += _schedule_lines("schedule", config.schedule.cron, zone, now)
    for d in config.destination:
        where = d.path if d.type == "local" else f"s3://{d.bucket}/{d.prefix}"
        stored = f"compression {d.compression}"
        if d.encryption is not None:
            stored += f", age-encrypted to {len(d.encryption.public_keys())} recipient(s)"
        lines.append(f"destination {d.name}: {d.type} {where} ({stored})")
        if d.cron:
            lines += [f"  {line}" for line in _schedule_lines("own schedule", d.cron, zone, now)]
    drill = "drill" if config.drill.enabled else "drill (disabled)"
    lines += _schedule_lines(drill, config.drill.cron, zone, now)
    return lines
