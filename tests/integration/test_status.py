"""`etcd-backupd status` as an operator or a monitoring check runs it: a local destination and an
S3 bucket (moto's server) holding backups a real `once` took from real etcd."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from etcd_backupd.manifest import manifest_name, snapshot_name
from tests.harness.cli import local_destination, run_cli, s3_destination
from tests.harness.cli import write_config as config_file
from tests.harness.etcd import EtcdCluster, load_kubernetes_like_keys
from tests.harness.s3 import MotoServer, make_bucket

BUCKET = "etcd-status"


def write_config(tmp_path: Path, cluster: EtcdCluster, s3: MotoServer) -> Path:
    return config_file(
        tmp_path,
        cluster,
        etcd={"cluster_name": "prod"},
        schedule={"cron": "0 */6 * * *"},
        drill={"bin_dir": str(cluster.binaries.etcd.parent)},
        destinations=[
            local_destination(tmp_path / "backups"),
            s3_destination(s3.endpoint_url, BUCKET, cron="0 3 * * *"),
        ],
    )


def status(config: Path, *flags: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("status", "--config", str(config), "-o", "json", *flags)
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["destination"]: d for d in report["destinations"]}


def test_status_reports_each_destination_and_checks_the_age(
    etcd35: EtcdCluster, s3: MotoServer, tmp_path: Path
) -> None:
    make_bucket(s3.client(), BUCKET)
    load_kubernetes_like_keys(etcd35, count=60)
    config = write_config(tmp_path, etcd35, s3)

    # nothing backed up yet: the check fails, and says why
    code, report = status(config)
    assert code == 7
    assert report["ok"] is False
    assert by_name(report)["local"]["newest"] is None
    text = run_cli("status", "--config", str(config))
    assert text.returncode == 7
    assert "local: STALE: no backup" in text.stdout

    taken = []
    for _ in range(2):
        taken.append(run_cli("once", "--config", str(config), "-o", "json"))
        # names carry the second a run began in, and a second backup in the same second is
        # refused by design: the next run begins after the second this one ended in
        ended = int(time.time())
        while int(time.time()) == ended:
            time.sleep(0.05)
    assert all(t.returncode == 0 for t in taken), taken[-1].stderr
    manifest = json.loads(taken[-1].stdout)["snapshot"]

    code, report = status(config)
    assert code == 0, report
    local, bucket = by_name(report)["local"], by_name(report)["s3"]
    for destination in (local, bucket):
        assert destination["fresh"] is True
        assert destination["newest"] == manifest["snapshot"]
        (held,) = destination["clusters"]
        assert held["cluster"] == "prod"
        assert held["count"] == 2
        assert held["newest"]["revision"] == manifest["revision"]
        assert held["newest"]["size"] == manifest["size"]
        assert 0 <= held["newest"]["age_seconds"] < 120
        assert destination["last_drill"] is None
    stored = sorted((tmp_path / "backups").glob("*.db"))
    assert local["clusters"][0]["total_bytes"] == sum(p.stat().st_size for p in stored)
    # the default max age is twice the longest gap between fire times
    assert local["max_age_seconds"] == 2 * 6 * 3600
    assert bucket["max_age_seconds"] == 2 * 24 * 3600
    next_fire = datetime.fromisoformat(bucket["next_fire"])
    assert next_fire.hour == 3 and next_fire.minute == 0
    assert timedelta(0) < next_fire - datetime.now(UTC) <= timedelta(days=1)

    # the local destination's newest backup turns a day old: only it is stale
    backups = tmp_path / "backups"
    for path in backups.glob("*.manifest.json"):
        data = json.loads(path.read_text())
        created = datetime.fromisoformat(data["created"]) - timedelta(days=1)
        older = snapshot_name(data["cluster_name"], created)
        (backups / data["snapshot"]).rename(backups / older)
        data.update(created=created.isoformat(), snapshot=older)
        (backups / manifest_name(older)).write_text(json.dumps(data))
        path.unlink()
    code, report = status(config)
    assert code == 7
    assert by_name(report)["local"]["fresh"] is False
    assert by_name(report)["s3"]["fresh"] is True
    text = run_cli("status", "--config", str(config)).stdout
    assert "local: STALE: newest 1d 0h" in text
    assert "(max age 12h 0m)" in text
    assert "s3: OK: newest" in text
    assert status(config, "--max-age", "2d")[0] == 0
    assert status(config, "--destination", "s3")[0] == 0

    # a drill's verdict is kept in state_dir and shown
    drilled = run_cli("drill", "--config", str(config), "--destination", "s3")
    assert drilled.returncode == 0, drilled.stderr
    steps = [f"step {n} of 3" for n in (1, 2, 3)]
    assert [drilled.stderr.index(step) for step in steps] == sorted(
        drilled.stderr.index(step) for step in steps
    )
    _, report = status(config)
    assert by_name(report)["s3"]["last_drill"]["ok"] is True
    assert by_name(report)["s3"]["last_drill"]["snapshot"] == manifest["snapshot"]
    assert by_name(report)["local"]["last_drill"] is None
    text = run_cli("status", "--config", str(config)).stdout
    assert "last drill: unknown" in text
    assert f"last drill: passed at {datetime.now(UTC):%Y-%m-%d}" in text


def test_status_of_an_unreadable_destination_and_bad_flags(
    etcd35: EtcdCluster, s3: MotoServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path, etcd35, s3)  # the bucket was never made
    code, report = status(config)
    assert code == 5
    assert "NoSuchBucket" in by_name(report)["s3"]["error"] or "bucket" in (
        by_name(report)["s3"]["error"].lower()
    )
    bad = run_cli("status", "--config", str(config), "--max-age", "soon")
    assert bad.returncode == 1
    assert bad.stderr.startswith("etcd-backupd: --max-age: 'soon' is not a duration")
    unknown = run_cli("status", "--config", str(config), "--destination", "nas")
    assert unknown.returncode == 1
    assert "no destination named 'nas'; configured: local, s3" in unknown.stderr
