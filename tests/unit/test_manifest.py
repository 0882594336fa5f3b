from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from etcd_backupd.manifest import (
    MANIFEST_MAX_BYTES,
    Cluster,
    ManifestRejected,
    manifest_name,
    parse_snapshot_name,
    read_manifest,
    snapshot_name,
    snapshot_of_manifest,
)
from tests.harness.backups import make_manifest


def test_names_sort_by_time_and_round_trip() -> None:
    times = [datetime(2026, 11, 23, 22, 45, tzinfo=UTC) + timedelta(hours=h) for h in (0, 5, 30)]
    names = [snapshot_name("prod", t) for t in times]
    assert names[0] == "etcd-snapshot-prod-20261123T224500Z.db"
    assert sorted(names) == names
    assert [parse_snapshot_name(n) for n in names] == [("prod", t) for t in times]


@pytest.mark.parametrize("suffix", [".zst", ".gz", ".age", ".zst.age", ".gz.age"])
def test_stored_names_carry_the_same_cluster_and_time(suffix: str) -> None:
    name = snapshot_name("prod", NOW)
    assert parse_snapshot_name(name + suffix) == ("prod", NOW)
    assert snapshot_of_manifest(manifest_name(name + suffix)) == name + suffix


def test_stored_suffixes_in_another_order_are_not_ours() -> None:
    name = snapshot_name("prod", NOW)
    for suffix in (".age.zst", ".zst.gz", ".bz2", ".age.age"):
        assert parse_snapshot_name(name + suffix) is None


def test_name_is_utc_whatever_the_clock_zone() -> None:
    local = datetime(2026, 11, 24, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert snapshot_name("c", local) == "etcd-snapshot-c-20261123T230000Z.db"


def test_foreign_names_are_not_ours() -> None:
    for name in ["notes.txt", "etcd-snapshot-x.db", "etcd-snapshot-c-20261123T2245Z.db"]:
        assert parse_snapshot_name(name) is None
    assert manifest_name("a.db") == "a.db.manifest.json"


NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
NAME = snapshot_name("prod", NOW)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"snapshot": "/etc/shadow"}, "snapshot"),
        ({"snapshot": "../" + NAME}, "snapshot"),
        ({"snapshot": snapshot_name("prod", NOW + timedelta(hours=1))}, "snapshot"),
        ({"cluster_name": "other"}, "cluster_name"),
        ({"created": (NOW + timedelta(days=1)).isoformat()}, "created"),
        ({"created": NOW.replace(tzinfo=None).isoformat()}, "created"),
        ({"revision": "many"}, "revision"),
    ],
)
def test_a_manifest_that_does_not_match_its_name_is_rejected_naming_the_field(
    change: dict[str, str], field: str
) -> None:
    fields = json.loads(make_manifest("prod", NOW).to_json())
    fields.update(change)
    with pytest.raises(ManifestRejected) as rejected:
        read_manifest(json.dumps(fields).encode(), NAME)
    assert rejected.value.field == field


def test_a_sound_manifest_reads_and_belongs_to_its_cluster_only() -> None:
    manifest = read_manifest(make_manifest("prod", NOW).to_json().encode(), NAME)
    assert Cluster("prod").owns(manifest)
    assert Cluster("prod", manifest.cluster_id).owns(manifest)
    assert not Cluster("prod", "ffffffffffffffff").owns(manifest)
    assert not Cluster("other").owns(manifest)
    with pytest.raises(ManifestRejected, match="larger than"):
        read_manifest(b" " * (MANIFEST_MAX_BYTES + 1), NAME)


def test_a_manifest_from_before_encryption_still_reads() -> None:
    old = make_manifest("prod", NOW, snapshot=NAME + ".zst", compression="zstd")
    fields = json.loads(old.to_json())
    for added in ("stored_format", "recipients", "snapshot_sha256", "stored_sha256"):
        del fields[added]
    manifest = read_manifest(json.dumps(fields).encode(), NAME + ".zst")
    assert manifest.stored_format == "zstd"
    assert manifest.recipients == ()
    assert manifest.snapshot_sha256 is None and manifest.stored_sha256 is None


def test_an_encrypted_backups_manifest_keeps_its_format_recipients_and_digests() -> None:
    recipients = ("age1" + "q" * 58, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI host")
    written = make_manifest(
        "prod",
        NOW,
        snapshot=NAME + ".zst.age",
        compression="zstd",
        stored_format="zstd+age",
        recipients=recipients,
        snapshot_sha256="a" * 64,
        stored_sha256="b" * 64,
    )
    manifest = read_manifest(written.to_json().encode(), NAME + ".zst.age")
    assert manifest == written.model_validate(written.model_dump())
    assert manifest.stored_format == "zstd+age"
    assert manifest.recipients == recipients
    assert (manifest.snapshot_sha256, manifest.stored_sha256) == ("a" * 64, "b" * 64)
