from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from etcd_backupd.manifest import manifest_name, parse_snapshot_name, snapshot_name


def test_names_sort_by_time_and_round_trip() -> None:
    times = [datetime(2026, 11, 23, 22, 45, tzinfo=UTC) + timedelta(hours=h) for h in (0, 5, 30)]
    names = [snapshot_name("prod", t) for t in times]
    assert names[0] == "etcd-snapshot-prod-20261123T224500Z.db"
    assert sorted(names) == names
    assert [parse_snapshot_name(n) for n in names] == [("prod", t) for t in times]


def test_name_is_utc_whatever_the_clock_zone() -> None:
    local = datetime(2026, 11, 24, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert snapshot_name("c", local) == "etcd-snapshot-c-20261123T230000Z.db"


def test_foreign_names_are_not_ours() -> None:
    for name in ["notes.txt", "etcd-snapshot-x.db", "etcd-snapshot-c-20261123T2245Z.db"]:
        assert parse_snapshot_name(name) is None
    assert manifest_name("a.db") == "a.db.manifest.json"
