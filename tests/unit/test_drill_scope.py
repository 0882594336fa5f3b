"""A drill proves this cluster's newest believable backup, whatever else the destination holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from etcd_backupd.manifest import Cluster
from etcd_backupd.restore import newest_backup
from tests.harness.backups import CLUSTER_IDS, make_manifest

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
PROD = Cluster("prod", CLUSTER_IDS["prod"])


def test_a_drill_takes_this_clusters_newest_backup_only() -> None:
    ours = make_manifest("prod", NOW - timedelta(hours=2))
    held = [
        make_manifest("prod", NOW - timedelta(hours=3)),
        ours,
        make_manifest("other", NOW - timedelta(minutes=10)),
        # the same name, another etcd cluster behind it
        make_manifest("prod", NOW - timedelta(hours=1), cluster_id="ffffffffffffffff"),
        make_manifest("prod", NOW + timedelta(days=2)),  # dated in the future
    ]
    assert newest_backup(held, PROD, NOW) == ours
    assert newest_backup(held[2:], PROD, NOW) is None
