"""`once` on a standby host: nothing taken, and said in the output format asked for."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from etcd_backupd.config import EtcdConfig
from etcd_backupd.etcd import EtcdSource
from tests.harness.cli import run_cli
from tests.harness.etcd import EtcdCluster
from tests.integration.test_standby_order import host_config


def once(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("once", "--config", str(config), *args, timeout=60)


def test_once_on_a_standby_prints_json_when_asked(
    etcd_cluster3: EtcdCluster, tmp_path: Path
) -> None:
    live = EtcdSource(EtcdConfig(endpoints=etcd_cluster3.endpoints)).healthy_members()
    leader = next(m for m in live if m.is_leader)
    follower = next(m for m in live if not m.is_leader)
    by_url = {m.client_url: m for m in etcd_cluster3.members}
    while datetime.now(UTC).second > 40:  # both runs must see the same fire minute
        time.sleep(1)
    active = once(host_config(tmp_path, etcd_cluster3, by_url[leader.endpoint]))
    assert active.returncode == 0, active.stderr
    standby = once(
        host_config(tmp_path, etcd_cluster3, by_url[follower.endpoint]), "--output", "json"
    )
    assert standby.returncode == 0, standby.stderr
    report = json.loads(standby.stdout)
    assert report == {
        "ok": True,
        "standby": "another host backed up this fire time",
        "snapshot": None,
        "destinations": [],
    }
    assert len(list((tmp_path / "shared").glob("*.db"))) == 1
