"""Standbys take over in turn: with the leader's host down, the live follower with the lowest
member ID backs the fire time up after one grace period; the next one finds it done."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from etcd_backupd.config import EtcdConfig
from etcd_backupd.etcd import EtcdSource
from tests.harness.cli import local_destination, start_cli, write_config
from tests.harness.etcd import EtcdCluster, EtcdMember


def host_config(tmp_path: Path, cluster: EtcdCluster, member: EtcdMember) -> Path:
    return write_config(
        tmp_path,
        cluster,
        name=f"{member.name}.toml",
        state_dir=str(tmp_path / member.name),
        etcd={"local_endpoint": member.client_url, "dial_timeout": 2.0},
        schedule={"standby_grace": 2.0},
        destinations=[local_destination(tmp_path / "shared", name="shared")],
    )


def test_standbys_take_over_in_member_id_order(etcd_cluster3: EtcdCluster, tmp_path: Path) -> None:
    live = EtcdSource(EtcdConfig(endpoints=etcd_cluster3.endpoints)).healthy_members()
    followers = sorted((m for m in live if not m.is_leader), key=lambda m: m.member_id)
    first, second = (
        next(x for x in etcd_cluster3.members if x.client_url == m.endpoint) for m in followers
    )
    while datetime.now(UTC).second > 45:  # both runs must see the same fire minute
        time.sleep(1)
    # the leader's host runs no daemon: only the two standbys try, at the same instant
    configs = {m.name: host_config(tmp_path, etcd_cluster3, m) for m in (first, second)}
    runs = {
        name: start_cli(
            "once", "--config", str(configs[name]), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name in (second.name, first.name)
    }
    out = {name: process.communicate(timeout=60) for name, process in runs.items()}
    assert all(process.returncode == 0 for process in runs.values()), out
    assert out[first.name][0].startswith("snapshot etcd-snapshot-"), out[first.name]
    assert "standby: another host backed up this fire time" in out[second.name][0], out
    assert "standby 1:" in out[first.name][1] and "standby 2:" in out[second.name][1]
    assert len(list((tmp_path / "shared").glob("*.db"))) == 1
