"""What `status` judges fresh, and the drill records it reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from etcd_backupd.drill_record import DrillRecord, last_drill, record_drill
from etcd_backupd.freshness import assess
from etcd_backupd.manifest import Manifest, MemberInfo, snapshot_name

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def manifest(cluster: str, created: datetime, size: int = 1000) -> Manifest:
    return Manifest(
        snapshot=snapshot_name(cluster, created),
        created=created,
        duration_seconds=1.0,
        size=size,
        stored_size=size // 2,
        sha256="0" * 64,
        revision=int(created.timestamp()),
        total_keys=10,
        live_keys=5,
        total_size=size,
        hash=1,
        etcd_version="3.5.1",
        cluster_id="1",
        cluster_name=cluster,
        member=MemberInfo(id="1", name="m1", endpoint="http://127.0.0.1:2379", is_leader=True),
        tool_version="test",
    )


def test_only_the_named_clusters_backups_are_judged() -> None:
    held = [
        manifest("other", NOW - timedelta(days=30)),
        manifest("prod", NOW - timedelta(hours=30)),
        manifest("prod", NOW - timedelta(hours=2)),
    ]
    status = assess("s3", held, now=NOW, max_age=DAY, cluster="prod", next_fire=None, drill=None)
    assert status.fresh
    assert status.age == timedelta(hours=2)
    other, prod = status.clusters
    assert (other.cluster, other.judged, other.count) == ("other", False, 1)
    assert (prod.count, prod.total_bytes, prod.judged) == (2, 1000, True)
    assert prod.newest is held[-1]

    unnamed = assess("s3", held[:1], now=NOW, max_age=DAY, cluster=None, next_fire=None, drill=None)
    assert not unnamed.fresh
    assert unnamed.age == timedelta(days=30)


def test_a_future_dated_backup_never_counts_as_the_newest() -> None:
    held = [manifest("prod", NOW - 3 * DAY), manifest("prod", NOW + 365 * DAY)]
    status = assess("l", held, now=NOW, max_age=DAY, cluster="prod", next_fire=None, drill=None)
    assert not status.fresh
    assert status.newest is held[0]
    assert status.clusters[0].future == 1
    assert status.clusters[0].count == 2

    only_future = assess(
        "l", held[1:], now=NOW, max_age=DAY, cluster=None, next_fire=None, drill=None
    )
    assert only_future.newest is None and not only_future.fresh


def test_no_backup_is_never_fresh_and_no_limit_is_never_stale() -> None:
    assert not assess(
        "l", [], now=NOW, max_age=None, cluster=None, next_fire=None, drill=None
    ).fresh
    ancient = [manifest("prod", NOW - 900 * DAY)]
    assert assess(
        "l", ancient, now=NOW, max_age=None, cluster=None, next_fire=None, drill=None
    ).fresh


def test_a_drill_record_round_trips_and_a_bad_one_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    assert last_drill(state, "s3") is None
    record = DrillRecord("s3", "etcd-snapshot-prod-x.db", False, NOW, 12.5, "revision differs")
    record_drill(state, record)
    assert last_drill(state, "s3") == record
    assert state.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in state.iterdir()] == ["last-drill-s3.json"]

    path = state / "last-drill-s3.json"
    for bad in (
        "not json",
        json.dumps({"destination": "local"}),
        json.dumps(
            {
                "destination": "s3",
                "snapshot": "x",
                "ok": True,
                "finished": "2026-11-24T12:00:00",
                "seconds": 1,
            }
        ),
    ):
        path.write_text(bad)
        assert last_drill(state, "s3") is None
    assert "ignoring" in caplog.text

    path.unlink()
    (tmp_path / "elsewhere").write_text(json.dumps({"destination": "s3"}))
    path.symlink_to(tmp_path / "elsewhere")
    assert last_drill(state, "s3") is None


def test_a_drill_record_that_cannot_be_written_is_only_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    record_drill(blocked, DrillRecord("s3", "x", True, NOW, 1.0))
    assert "cannot record the drill of s3" in caplog.text
