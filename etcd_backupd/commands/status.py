"""`etcd-backupd status`: the state of the backups in one look, and a cron or Nagios-style check
of their age."""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..clock import SYSTEM_CLOCK
from ..errors import BackupError, ExitCode
from .common import chosen, config_option, output_option, print_json

if TYPE_CHECKING:
    from ..config import Config
    from ..freshness import DestinationStatus


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "status",
        help="how fresh the backups are, per destination and cluster",
        description="Per destination and cluster: the newest backup, its age, size and "
        "revision, how many backups and bytes are held, the next fire time and the last drill. "
        f"Exits {ExitCode.OK.value} when every destination's newest backup is younger than "
        f"--max-age, {ExitCode.STALE.value} when one is older or there is none, "
        f"{ExitCode.DESTINATION.value} when a destination cannot be listed: usable as a cron or "
        "Nagios-style check.",
    )
    config_option(parser)
    parser.add_argument(
        "--max-age",
        metavar="DURATION",
        help='oldest acceptable newest backup, e.g. "36h" or "2d" (default: twice the longest '
        "gap between the destination's fire times)",
    )
    parser.add_argument("--destination", "-d", help="only this destination")
    output_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..retention import parse_duration

    max_age = None
    if args.max_age is not None:
        try:
            max_age = parse_duration(args.max_age)
        except ValueError as exc:
            raise BackupError(f"--max-age: {exc}") from None
    config = load_config(args.config)
    chosen(config, args.destination)
    statuses = collect(config, SYSTEM_CLOCK.now(), max_age, args.destination)
    if args.output == "json":
        print_json(to_json(statuses))
    else:
        for status in statuses:
            print("\n".join(describe(status)))
    if any(s.error is not None for s in statuses):
        return ExitCode.DESTINATION
    return ExitCode.OK if all(s.fresh for s in statuses) else ExitCode.STALE


def collect(
    config: Config, now: datetime, max_age: timedelta | None, only: str | None = None
) -> list[DestinationStatus]:
    from ..destinations import build
    from ..destinations.held import every_cluster, list_held
    from ..drill_record import last_drill
    from ..freshness import assess, unreadable
    from ..scheduler import Schedule

    schedule = Schedule.of(config)
    _, intervals = schedule.intervals(now)
    chosen = [d for d in config.destination if only in (None, d.name)]
    # assess groups every cluster's backups and judges our own; a failure is shown as a status
    listing = list_held(
        {settings.name: build(settings).manifests for settings in chosen}, every_cluster, warn=False
    )
    statuses = []
    for settings in chosen:
        interval = intervals[settings.name]
        limit = max_age
        if limit is None and math.isfinite(interval):
            limit = timedelta(seconds=2 * interval)
        next_fire = schedule.triggers[settings.name].schedule.next_after(now)
        drill = last_drill(config.state_dir, settings.name)
        if settings.name in listing.failed:
            statuses.append(
                unreadable(
                    settings.name,
                    listing.failed[settings.name],
                    now=now,
                    max_age=limit,
                    next_fire=next_fire,
                    drill=drill,
                )
            )
            continue
        statuses.append(
            assess(
                settings.name,
                listing.held[settings.name],
                now=now,
                max_age=limit,
                cluster=config.etcd.cluster_name,
                next_fire=next_fire,
                drill=drill,
            )
        )
    return statuses


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours or days:
        parts.append(f"{hours}h")
    parts.append(f"{minutes}m" if days or hours or minutes else f"{seconds}s")
    return sign + " ".join(parts)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else "never"


def describe(status: DestinationStatus) -> list[str]:
    limit = _duration(status.max_age) if status.max_age is not None else "none"
    if status.error is not None:
        verdict = f"UNREADABLE: {status.error}"
    elif status.newest is None:
        verdict = "STALE: no backup"
    else:
        assert status.age is not None
        word = "OK" if status.fresh else "STALE"
        verdict = f"{word}: newest {_duration(status.age)} old (max age {limit})"
    lines = [f"{status.destination}: {verdict}", f"  next backup: {_when(status.next_fire)}"]
    for held in status.clusters:
        note = "" if held.judged else " (another cluster: not checked)"
        lines.append(
            f"  cluster {held.cluster}: {held.count} backup(s), {_size(held.total_bytes)}{note}"
        )
        if held.newest is not None:
            newest = held.newest
            lines.append(
                f"    newest {newest.snapshot}  {_when(newest.created)}  "
                f"age {_duration(status.checked_at - newest.created)}  rev {newest.revision}  "
                f"{_size(newest.stored_size)}"
            )
        if held.future:
            lines.append(f"    {held.future} dated in the future (a wrong clock?): not counted")
    drill = status.drill
    if drill is None:
        lines.append("  last drill: unknown (none recorded on this host)")
    else:
        verdict = "passed" if drill.ok else f"FAILED: {drill.error}"
        lines.append(f"  last drill: {verdict} at {_when(drill.finished)} ({drill.snapshot})")
    return lines


def to_json(statuses: list[DestinationStatus]) -> dict[str, Any]:
    def seconds(delta: timedelta | None) -> float | None:
        return delta.total_seconds() if delta is not None else None

    def stamp(moment: datetime | None) -> str | None:
        return moment.astimezone(UTC).isoformat() if moment is not None else None

    destinations = []
    for status in statuses:
        drill = status.drill
        destinations.append(
            {
                "destination": status.destination,
                "fresh": status.fresh,
                "error": status.error,
                "newest": status.newest.snapshot if status.newest else None,
                "age_seconds": seconds(status.age),
                "max_age_seconds": seconds(status.max_age),
                "next_fire": stamp(status.next_fire),
                "last_drill": None
                if drill is None
                else {
                    "ok": drill.ok,
                    "snapshot": drill.snapshot,
                    "finished": stamp(drill.finished),
                    "seconds": drill.seconds,
                    "error": drill.error,
                },
                "clusters": [
                    {
                        "cluster": held.cluster,
                        "checked": held.judged,
                        "count": held.count,
                        "total_bytes": held.total_bytes,
                        "future": held.future,
                        "newest": None
                        if held.newest is None
                        else {
                            "snapshot": held.newest.snapshot,
                            "created": stamp(held.newest.created),
                            "age_seconds": seconds(status.checked_at - held.newest.created),
                            "size": held.newest.size,
                            "stored_size": held.newest.stored_size,
                            "revision": held.newest.revision,
                        },
                    }
                    for held in status.clusters
                ],
            }
        )
    return {
        "ok": all(s.fresh for s in statuses),
        "checked_at": stamp(statuses[0].checked_at) if statuses else None,
        "destinations": destinations,
    }
