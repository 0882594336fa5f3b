"""Pruning a local destination: what goes, what stays, and what is never touched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from etcd_backupd.config import LocalDestination
from etcd_backupd.destinations.local import LocalDirectory
from etcd_backupd.manifest import manifest_name, snapshot_name
from etcd_backupd.prune import prune, sweep_orphans
from etcd_backupd.retention import RetentionPolicy

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def make_destination(tmp_path: Path) -> LocalDirectory:
    return LocalDirectory(LocalDestination(type="local", name="local", path=tmp_path))


def backup(directory: Path, created: datetime, *, manifest: bool = True, snap: bool = True) -> str:
    name = snapshot_name("c", created)
    if snap:
        (directory / name).write_bytes(b"snapshot")
    if manifest:
        (directory / manifest_name(name)).write_text("{}")
    return name


def test_keep_last_deletes_the_rest_and_spares_foreign_files(tmp_path: Path) -> None:
    names = [backup(tmp_path, NOW - timedelta(hours=12 * i)) for i in range(10)]
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "etcd-snapshot-other.db").write_text("not ours either")

    result = prune(make_destination(tmp_path), RetentionPolicy(keep_last=3), now=NOW)

    assert sorted(result.deleted) == sorted(names[3:])
    left = sorted(p.name for p in tmp_path.iterdir())
    expected = sorted(
        [*names[:3], *(manifest_name(n) for n in names[:3]), "notes.txt", "etcd-snapshot-other.db"]
    )
    assert left == expected


def test_dry_run_deletes_nothing(tmp_path: Path) -> None:
    for i in range(5):
        backup(tmp_path, NOW - timedelta(days=i))
    before = sorted(tmp_path.iterdir())
    result = prune(make_destination(tmp_path), RetentionPolicy(keep_last=1), now=NOW, dry_run=True)
    assert len(result.deleted) == 4
    assert sorted(tmp_path.iterdir()) == before


def test_old_orphans_go_young_ones_stay(tmp_path: Path) -> None:
    keep = backup(tmp_path, NOW - timedelta(hours=1))
    old_snapshot = backup(tmp_path, NOW - timedelta(days=3), manifest=False)
    old_manifest = backup(tmp_path, NOW - timedelta(days=4), snap=False)
    young = backup(tmp_path, NOW - timedelta(hours=2), manifest=False)

    removed = sweep_orphans(make_destination(tmp_path), now=NOW, lock=None)

    assert sorted(removed) == sorted([old_snapshot, old_manifest])
    assert (tmp_path / keep).exists()
    assert (tmp_path / young).exists()
    assert not (tmp_path / old_snapshot).exists()
    assert not (tmp_path / manifest_name(old_manifest)).exists()


def test_empty_policy_keeps_everything(tmp_path: Path) -> None:
    for i in range(4):
        backup(tmp_path, NOW - timedelta(days=30 * i))
    result = prune(make_destination(tmp_path), RetentionPolicy(), now=NOW)
    assert result.deleted == ()
    assert len(list(tmp_path.iterdir())) == 8
