"""Pruning a local destination: what goes, what stays, and what is never touched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from etcd_backupd.config_destinations import LocalDestination
from etcd_backupd.destinations.local import LocalDirectory
from etcd_backupd.manifest import Cluster, manifest_name, snapshot_name
from etcd_backupd.prune import prune
from etcd_backupd.retention import RetentionPolicy
from tests.harness.backups import CLUSTER_IDS, plant_local

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
PROD = Cluster("prod", CLUSTER_IDS["prod"])


def make_destination(tmp_path: Path) -> LocalDirectory:
    return LocalDirectory(LocalDestination(type="local", name="local", path=tmp_path))


def test_keep_last_deletes_the_rest_and_spares_foreign_files(tmp_path: Path) -> None:
    names = [plant_local(tmp_path, "prod", NOW - timedelta(hours=12 * i)) for i in range(10)]
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "etcd-snapshot-other.db").write_text("not ours either")

    result = prune(make_destination(tmp_path), RetentionPolicy(keep_last=3), now=NOW, cluster=PROD)

    assert sorted(result.deleted) == sorted(names[3:])
    left = sorted(p.name for p in tmp_path.iterdir())
    expected = sorted(
        [*names[:3], *(manifest_name(n) for n in names[:3]), "notes.txt", "etcd-snapshot-other.db"]
    )
    assert left == expected


def test_dry_run_deletes_nothing(tmp_path: Path) -> None:
    for i in range(5):
        plant_local(tmp_path, "prod", NOW - timedelta(days=i))
    before = sorted(tmp_path.iterdir())
    result = prune(
        make_destination(tmp_path),
        RetentionPolicy(keep_last=1),
        now=NOW,
        cluster=PROD,
        dry_run=True,
    )
    assert len(result.deleted) == 4
    assert sorted(tmp_path.iterdir()) == before


def test_orphans_take_no_slot_and_go_only_when_asked(tmp_path: Path) -> None:
    keep = plant_local(tmp_path, "prod", NOW - timedelta(hours=3))
    old_snapshot = plant_local(tmp_path, "prod", NOW - timedelta(days=3), manifest=False)
    young = plant_local(tmp_path, "prod", NOW - timedelta(hours=2), manifest=False)
    foreign = plant_local(tmp_path, "other", NOW - timedelta(days=3), manifest=False)
    old_manifest = plant_local(tmp_path, "prod", NOW - timedelta(days=4))
    (tmp_path / old_manifest).unlink()
    destination = make_destination(tmp_path)

    # the hand-copied snapshot neither takes a keep slot nor is deleted by retention
    result = prune(destination, RetentionPolicy(keep_last=1), now=NOW, cluster=PROD)
    assert [d.snapshot.name for d in result.decisions] == [keep]
    assert result.deleted == ()
    assert set(result.orphans) == {old_snapshot, young, old_manifest}
    assert (tmp_path / old_snapshot).exists() and (tmp_path / manifest_name(old_manifest)).exists()

    asked = prune(destination, RetentionPolicy(keep_last=1), now=NOW, cluster=PROD, orphans=True)
    assert sorted(asked.orphans_deleted) == sorted([old_snapshot, old_manifest])
    assert (tmp_path / keep).exists()
    assert (tmp_path / young).exists()
    assert (tmp_path / foreign).exists()  # another cluster's: never ours to remove
    assert not (tmp_path / old_snapshot).exists()
    assert not (tmp_path / manifest_name(old_manifest)).exists()


def test_directories_named_like_backups_are_no_orphans(tmp_path: Path) -> None:
    orphan = plant_local(tmp_path, "prod", NOW - timedelta(days=3), manifest=False)
    planted = [
        tmp_path / snapshot_name("prod", NOW - timedelta(days=5)),
        tmp_path / manifest_name(snapshot_name("prod", NOW - timedelta(days=6))),
    ]
    for directory in planted:
        directory.mkdir()
        (directory / "inside").write_text("someone's")

    asked = prune(
        make_destination(tmp_path),
        RetentionPolicy(keep_last=1),
        now=NOW,
        cluster=PROD,
        orphans=True,
    )

    assert list(asked.orphans_deleted) == [orphan]
    assert not (tmp_path / orphan).exists()
    assert all((d / "inside").read_text() == "someone's" for d in planted)


def test_empty_policy_keeps_everything(tmp_path: Path) -> None:
    for i in range(4):
        plant_local(tmp_path, "prod", NOW - timedelta(days=30 * i))
    result = prune(make_destination(tmp_path), RetentionPolicy(), now=NOW, cluster=PROD)
    assert result.deleted == ()
    assert len(list(tmp_path.iterdir())) == 8
