"""A daemon on every member of a three-member cluster: one snapshot per fire time, also after the
leader's host dies; every daemon reports the same last backup."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etcd_backupd.manifest import parse_snapshot_name
from tests.harness.cli import Running, local_destination, s3_destination, write_config
from tests.harness.etcd import EtcdCluster, EtcdMember, free_port, load_kubernetes_like_keys
from tests.harness.polling import wait_until
from tests.harness.s3 import MotoServer, make_bucket

BUCKET = "shared-backups"


class Host(Running):
    def __init__(self, member: EtcdMember, cluster: EtcdCluster, tmp: Path, s3: MotoServer):
        self.member = member
        self.port = free_port()
        config = write_config(
            tmp,
            cluster,
            name=f"{member.name}.toml",
            state_dir=str(tmp / member.name),
            etcd={"local_endpoint": member.client_url, "dial_timeout": 2.0},
            schedule={
                "cron": "* * * * *",
                "standby_grace": 12.0,
                "retry_attempts": 0,
                "catch_up": False,
            },
            metrics={"listen": f"127.0.0.1:{self.port}"},
            destinations=[
                local_destination(tmp / "shared", name="shared"),
                s3_destination(s3.endpoint_url, BUCKET, prefix="cluster/"),
            ],
        )
        super().__init__(config, tmp / f"{member.name}.log")

    def metrics(self) -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read()
        values = {}
        for line in text.decode().splitlines():
            if line.startswith("etcd_backup_") and " " in line:
                name, value = line.rsplit(" ", 1)
                # every series carries the host's cluster_id; the checks below compare hosts
                name = re.sub(r'cluster_id="[^"]*",?', "", name).replace(",}", "}")
                values[name.replace("{}", "")] = float(value)
        return values


@pytest.fixture
def hosts(etcd_cluster3: EtcdCluster, s3: MotoServer, tmp_path: Path) -> Iterator[list[Host]]:
    make_bucket(s3.client(), BUCKET)
    started = [Host(m, etcd_cluster3, tmp_path, s3) for m in etcd_cluster3.members]
    try:
        yield started
    finally:
        for host in started:
            host.kill()


def fire_times(directory: Path) -> list[datetime]:
    """The minute each stored snapshot belongs to."""
    minutes = []
    for path in directory.glob("*.db"):
        parsed = parse_snapshot_name(path.name)
        assert parsed is not None
        minutes.append(parsed[1].replace(second=0))
    return sorted(minutes)


def s3_fire_times(s3: MotoServer) -> list[datetime]:
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="cluster/", Delimiter="/")
    minutes = []
    for obj in listing.get("Contents", []):
        parsed = parse_snapshot_name(obj["Key"].removeprefix("cluster/"))
        if parsed is not None:
            minutes.append(parsed[1].replace(second=0))
    return sorted(minutes)


@pytest.mark.slow
def test_one_snapshot_per_fire_across_three_hosts(
    etcd_cluster3: EtcdCluster, hosts: list[Host], s3: MotoServer, tmp_path: Path
) -> None:
    load_kubernetes_like_keys(etcd_cluster3, count=60)
    shared = tmp_path / "shared"
    # two fires with every host up
    wait_until(lambda: len(fire_times(shared)) >= 2, timeout=150, interval=1)
    # let the standbys' grace period for the second fire run out
    time.sleep(20)
    first = fire_times(shared)
    assert len(first) == len(set(first)), first
    assert s3_fire_times(s3) == first
    leader = etcd_cluster3.leader()
    leader_host = next(h for h in hosts if h.member is leader)
    assert "standby: another host backed up" in "".join(
        h.log.read_text() for h in hosts if h is not leader_host
    )

    # the leader's member and its daemon die; a new leader's host takes the next fire
    leader_host.kill()
    leader.kill()
    survivors = [h for h in hosts if h is not leader_host]
    count = len(first)
    wait_until(lambda: len(fire_times(shared)) > count, timeout=120, interval=1)
    time.sleep(25)
    after = fire_times(shared)
    assert len(after) == len(set(after)), after
    assert s3_fire_times(s3) == after

    # every surviving daemon reports the same last backup (standbys read it from destinations)
    wait_until(
        lambda: (
            len({h.metrics()["etcd_backup_last_success_timestamp_seconds"] for h in survivors}) == 1
        ),
        timeout=70,
        interval=1,
    )
    last = survivors[0].metrics()["etcd_backup_last_success_timestamp_seconds"]
    assert datetime.fromtimestamp(last, UTC).replace(second=0, microsecond=0) == after[-1]
    roles = [h.metrics() for h in survivors]
    assert sorted(r['etcd_backup_role{role="active"}'] for r in roles) == [0.0, 1.0]
    for host in survivors:
        host.stop()
