"""`etcd-backupd prune` as an operator runs it."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.harness.backups import plant_local
from tests.harness.cli import local_destination, run_cli, write_config


def test_prune_dry_run_then_for_real(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    newest = datetime.now(UTC).replace(microsecond=0)
    names = [plant_local(backups, "prod", newest - timedelta(hours=12 * i)) for i in range(8)]
    config = write_config(
        tmp_path,
        etcd={"cluster_name": "prod"},
        destinations=[local_destination(backups, retention={"keep_last": 2, "keep_daily": 3})],
        retention={"keep_last": 100},
    )

    def prune(*extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli("prune", "-c", str(config), *extra)

    dry = prune("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete" in dry.stdout
    assert "keep   " + names[0] in dry.stdout
    assert "newest verified" in dry.stdout
    assert len(list(backups.iterdir())) == 16

    listed = json.loads(prune("--dry-run", "-o", "json").stdout)["local"]["snapshots"]
    kept = [s["snapshot"] for s in listed if s["action"] == "keep"]
    # the destination's own policy wins over the global keep_last = 100: the two newest, and
    # the newest of each of the three most recent days
    newest_of_day: dict[str, str] = {}
    for index, name in enumerate(names):
        newest_of_day.setdefault((newest - timedelta(hours=12 * index)).date().isoformat(), name)
    expected = {names[0], names[1], *list(newest_of_day.values())[:3]}
    assert set(kept) == expected
    assert all(s["reasons"] for s in listed)

    real = prune()
    assert real.returncode == 0, real.stderr
    left = sorted(p.name for p in backups.iterdir() if p.name.endswith(".db"))
    assert left == sorted(kept)
