"""`etcd-backupd list`: the backups each destination holds, from their manifests."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from ..clock import SYSTEM_CLOCK
from ..errors import ExitCode
from .common import chosen, config_option, output_option, print_json


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "list",
        help="list the backups held by each destination",
        description="List stored backups from their manifests (the snapshots are not read).",
    )
    config_option(parser)
    output_option(parser)
    parser.add_argument("--destination", "-d", help="only this destination")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..destinations import build
    from ..manifest import parse_snapshot_name
    from ..retention import is_future

    config = load_config(args.config)
    now = SYSTEM_CLOCK.now()
    listing: dict[str, list[dict[str, Any]]] = {}
    for settings in chosen(config, args.destination):
        destination = build(settings)
        inventory = destination.inventory()
        manifests = {m.snapshot: m for m in destination.manifests(inventory)}
        entries: list[tuple[datetime, dict[str, Any]]] = []
        for item in inventory:
            parsed = parse_snapshot_name(item.snapshot)
            assert parsed is not None
            manifest = manifests.get(item.snapshot)
            if manifest is not None:
                entry = manifest.model_dump(mode="json")
            elif item.has_snapshot:
                entry = {"snapshot": item.snapshot, "created": item.created.isoformat()}
            else:
                continue  # a manifest alone is no backup, and prune reports it
            entry["cluster"] = parsed[0]
            entry["has_manifest"] = manifest is not None
            entry["future"] = is_future(item.created, now)
            entries.append((item.created, entry))
        entries.sort(key=lambda pair: (pair[1]["cluster"], pair[0], pair[1]["snapshot"]))
        listing[settings.name] = [entry for _, entry in entries]
    if args.output == "json":
        print_json(listing)
        return ExitCode.OK
    for name, rows in listing.items():
        backups = [e for e in rows if e["has_manifest"]]
        clusters = sorted({e["cluster"] for e in rows})
        print(f"{name}: {len(backups)} backup(s) of {len(clusters)} cluster(s)")
        for cluster in clusters:
            mine = [e for e in rows if e["cluster"] == cluster]
            print(f"  cluster {cluster}: {sum(e['has_manifest'] for e in mine)} backup(s)")
            for e in mine:
                created = datetime.fromisoformat(e["created"])
                line = f"    {e['snapshot']}  {created:%Y-%m-%d %H:%M:%SZ}"
                if e["has_manifest"]:
                    line += f"  rev {e['revision']:<10} {e['size']:>14} B  keys {e['total_keys']}"
                else:
                    line += "  no valid manifest: not a backup (prune --orphans removes it)"
                if e["future"]:
                    line += "  dated in the future"
                print(line)
    return ExitCode.OK
