"""etcd 3.6 snapshots, built page by page: the figures `etcdutl snapshot status` of each etcd line
prints, through `verify`, `inspect` and the manifest.

The expectations are worked out by hand from etcd's source: etcdutl/snapshot/v3_snapshot.go,
Status, at v3.6.0 (TOTAL KEYS: the user keys left after replaying bucket `key`, a tombstone
removing its key; VERSION: meta's storageVersion through go-semver) and at v3.5.x (TOTAL KEYS: one
per entry of every bucket); HASH and REVISION are computed alike by both.
"""

from __future__ import annotations

import json
import time
from base64 import b64decode
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etcd_backupd.cli import main as cli_main
from etcd_backupd.cycle import _manifest
from etcd_backupd.etcd import MemberStatus
from etcd_backupd.manifest import Manifest
from etcd_backupd.snapshot.bbolt import BUCKET_FLAG
from etcd_backupd.snapshot.status import semantic_version, verify_snapshot
from tests.unit.test_bbolt import (
    Database,
    Entry,
    branch_image,
    bucket,
    expected_hash,
    leaf_image,
    record,
    revision,
    sealed,
    write,
)

# puts, an overwrite, deletes and a transaction of two puts; the last revision is a delete
HISTORY: list[Entry] = [
    (revision(2), record(b"/registry/pods/a", b"1", 2), 0),
    (revision(3), record(b"/registry/pods/b", b"1", 3), 0),
    (revision(4), record(b"/registry/pods/a", b"2", 4), 0),
    (revision(5, tombstone=True), record(b"/registry/pods/b", b"", 5), 0),
    (revision(6), record(b"/registry/configmaps/c", b"1", 6), 0),
    (revision(7, 0), record(b"/registry/pods/d", b"1", 7), 0),
    (revision(7, 1), record(b"/registry/pods/e", b"1", 7), 0),
    (revision(8, tombstone=True), record(b"/registry/pods/e", b"", 8), 0),
]
LIVE = [b"/registry/configmaps/c", b"/registry/pods/a", b"/registry/pods/d"]


def etcd_snapshot(
    storage_version: bytes | None, bump: int = 0
) -> tuple[bytes, list[tuple[bytes, list[Entry]]]]:
    """A sealed snapshot as etcd of that storage version writes it (None: 3.5), bucket `key` on
    two leaves under a branch; and its buckets. With `bump`, of a cluster restored with
    `--bump-revision bump --mark-compacted`: an empty record at the bumped revision, compaction
    scheduled there (unsafeBumpBucketsRevision and unsafeMarkRevisionCompacted, v3.6.0)."""
    db = Database()
    history = list(HISTORY)
    meta: list[Entry] = [
        (b"confState", b'{"voters":[1]}', 0),
        (b"consistent_index", (9).to_bytes(8, "big"), 0),
    ]
    if bump:
        history.append((revision(8 + bump), b"", 0))
        meta.append((b"scheduledCompactRev", revision(8 + bump), 0))
    if storage_version is not None:
        meta.append((b"storageVersion", storage_version, 0))
    meta.append((b"term", (2).to_bytes(8, "big"), 0))
    halves = [history[:4], history[4:]]
    leaves = [db.add(leaf_image(half)) for half in halves]
    key_root = db.add(
        branch_image([(half[0][0], page) for half, page in zip(halves, leaves, strict=True)])
    )
    buckets: list[tuple[bytes, list[Entry]]] = [
        (b"cluster", [(b"clusterVersion", b"3.6.0" if storage_version else b"3.5.0", 0)]),
        (b"key", history),
        (b"lease", []),
        (b"members", [(b"1", b'{"id":1,"peerURLs":["http://127.0.0.1:2380"]}', 0)]),
        (b"meta", meta),
    ]
    top = [
        (name, bucket(key_root) if name == b"key" else bucket(inline=entries), BUCKET_FLAG)
        for name, entries in buckets
    ]
    return sealed(db.build(db.add(leaf_image(top)))), buckets


@pytest.mark.parametrize(
    ("stored", "version", "total_keys", "entries"),
    [
        # 3.6: the three keys alive after revision 8 (a, c, d); 3.5: the 8 revisions in `key`,
        # 1 in cluster, 1 in members, 3 in meta (4 with 3.6's storageVersion)
        (b"3.6.0", "3.6.0", 3, 14),
        (None, None, 13, 13),
    ],
    ids=["3.6", "3.5"],
)
def test_verify_prints_each_lines_total_keys_and_the_storage_version(
    stored: bytes | None,
    version: str | None,
    total_keys: int,
    entries: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, buckets = etcd_snapshot(stored)
    path = write(tmp_path, data, "snapshot.db")
    assert cli_main(["verify", str(path), "--output", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["storage_version"] == version
    assert (report["total_keys"], report["live_keys"], report["entries"]) == (
        total_keys,
        3,
        entries,
    )
    # unchanged by 3.6: the last revision in `key`, a tombstone here, and the CRC-32C
    assert (report["revision"], report["hash"]) == (8, expected_hash(buckets))

    assert cli_main(["verify", str(path)]) == 0
    text = capsys.readouterr().out
    counted = (
        "user keys, as etcdutl 3.6+ counts them" if version else "as etcdutl 3.4 and 3.5 count"
    )
    assert f"total keys  {total_keys} (" in text and counted in text
    assert f"version     {version or 'none (before etcd 3.6)'}" in text


@pytest.mark.parametrize(
    ("stored", "total_keys", "entries"),
    # 3.6 counts the bump's key "" with the three live keys; 3.5: 9 + 1 + 1 + 4 entries
    [(b"3.6.0", 4, 16), (None, 15, 15)],
    ids=["3.6", "3.5"],
)
def test_a_snapshot_of_a_cluster_restored_with_a_revision_bump(
    stored: bytes | None,
    total_keys: int,
    entries: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, buckets = etcd_snapshot(stored, bump=1_000_000_000)
    path = write(tmp_path, data, "snapshot.db")
    status = verify_snapshot(path)
    assert (status.revision, status.hash) == (1_000_000_008, expected_hash(buckets))
    assert (status.total_keys, status.live_keys, status.entries) == (total_keys, 3, entries)
    # etcd serves no key "": inspect, like etcdctl get --prefix, lists the three
    assert cli_main(["inspect", str(path), "--keys-only", "--output", "json"]) == 0
    assert [b64decode(k["key"]) for k in json.loads(capsys.readouterr().out)["kvs"]] == LIVE
    assert cli_main(["inspect", str(path), "--output", "json"]) == 0
    assert [b64decode(k["key"]) for k in json.loads(capsys.readouterr().out)["kvs"]] == LIVE


def test_inspect_lists_the_live_keys_of_a_36_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, etcd_snapshot(b"3.6.0")[0], "snapshot.db")
    assert cli_main(["inspect", str(path), "--output", "json"]) == 0
    keys = json.loads(capsys.readouterr().out)["kvs"]
    assert [b64decode(k["key"]) for k in keys] == LIVE
    assert [k["mod_revision"] for k in keys] == [6, 4, 7]
    assert cli_main(["inspect", str(path), "--revision", "5", "--keys-only"]) == 0
    assert capsys.readouterr().out == "/registry/pods/a\n\n"


def test_the_manifest_of_a_36_snapshot_records_its_storage_version(tmp_path: Path) -> None:
    path = write(tmp_path, etcd_snapshot(b"3.6.0")[0], "snapshot.db")
    status = verify_snapshot(path)
    member = MemberStatus("http://127.0.0.1:2379", 1, "m1", 1, 0xAB, "3.6.0", status.total_size)
    made = _manifest(
        "etcd-snapshot-c-20261202T000000Z.db",
        datetime(2026, 12, 2, tzinfo=UTC),
        time.monotonic(),
        status,
        member,
        "00000000000000ab",
        "c",
    )
    stored = json.loads(made.to_json())
    assert (stored["storage_version"], stored["total_keys"], stored["live_keys"]) == ("3.6.0", 3, 3)
    assert Manifest.from_json(made.to_json()) == made
    # a manifest written before the field existed reads as a snapshot without one
    del stored["storage_version"]
    assert Manifest.from_json(json.dumps(stored)).storage_version is None


@pytest.mark.parametrize(
    ("stored", "printed"),
    [
        (b"3.6.0", "3.6.0"),  # as etcd 3.6 writes it: major.minor, patch 0
        (b"3.7.0", "3.7.0"),
        (b"03.06.00", "3.6.0"),  # numbers print back without leading zeros
        (b"3.6.0-rc.1+build.5", "3.6.0-rc.1+build.5"),
        (b"3.6.0+meta-data", "3.6.0+meta-data"),  # split at the first '+' first
        (b"3.6.0-", "3.6.0"),  # an empty pre-release is none
        (b"3.6", None),  # not dotted-tri
        (b"3.6.0.1", None),
        (b"3.6.x", None),
        (b"3.6.0-rc..1", None),
        (b"3.6.0-r_c", None),
        (b" 3.6.0", None),
        (b"3.6.9223372036854775808", None),  # past int64
        (b"3.6.9223372036854775807", "3.6.9223372036854775807"),
        (b"", None),
        (b"3.\xff.0", None),
    ],
)
def test_the_storage_version_reads_as_go_semver_parses_it(
    stored: bytes, printed: str | None
) -> None:
    assert semantic_version(stored) == printed
