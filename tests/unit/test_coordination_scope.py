"""A standby asks "is this fire time backed up?" of its own cluster's backups only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from etcd_backupd.config_destinations import LocalDestination
from etcd_backupd.coordination import uncovered
from etcd_backupd.destinations.local import LocalDirectory
from etcd_backupd.manifest import Cluster
from tests.harness.backups import CLUSTER_IDS, plant_local

PROD = Cluster("prod", CLUSTER_IDS["prod"])


def test_only_this_clusters_believable_backup_covers_a_fire_time(tmp_path: Path) -> None:
    fire = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    store = LocalDirectory(LocalDestination(type="local", name="local", path=tmp_path))
    plant_local(tmp_path, "other", fire + timedelta(seconds=5))
    plant_local(tmp_path, "prod", fire + timedelta(days=3))  # planted, dated in the future
    plant_local(tmp_path, "prod", fire + timedelta(seconds=7), manifest=False)
    assert uncovered([store], fire, PROD) == [store]

    plant_local(tmp_path, "prod", fire + timedelta(seconds=9))
    assert uncovered([store], fire, PROD) == []
    assert uncovered([store], fire, Cluster("prod", "ffffffffffffffff")) == [store]
