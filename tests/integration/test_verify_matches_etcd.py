"""verify_snapshot gives exactly the figures etcd's own `snapshot status` prints, on real 3.5 and
3.4 snapshots, and turns away every truncated, bit-flipped or foreign file with one line."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from etcd_backupd.errors import SnapshotInvalid
from etcd_backupd.snapshot.bbolt import BRANCH_PAGE, LEAF_PAGE, PAGE_HEADER, BoltReader
from etcd_backupd.snapshot.status import SnapshotStatus, verify_snapshot
from tests.harness.etcd import EtcdBinaries, EtcdCluster, load_kubernetes_like_keys, start_cluster

ETCD_FIGURES = ("hash", "revision", "totalKey", "totalSize")


def etcd_status(binaries: EtcdBinaries, path: Path) -> dict[str, int]:
    """`snapshot status -w json` of etcdutl (3.5) or etcdctl (3.4)."""
    tool = binaries.etcdutl or binaries.etcdctl
    result = subprocess.run(
        [str(tool), "snapshot", "status", "-w", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "ETCDCTL_API": "3"},
        timeout=60,
    )
    figures: dict[str, int] = json.loads(result.stdout)
    return figures


def ours(status: SnapshotStatus) -> dict[str, int]:
    return dict(
        zip(
            ETCD_FIGURES,
            (status.hash, status.revision, status.total_keys, status.total_size),
            strict=True,
        )
    )


def busy_history(cluster: EtcdCluster) -> None:
    """A Kubernetes-like keyspace with every kind of record: puts, overwrites, deletes, a
    transaction, a lease with keys, a value larger than a page, and a compaction; enough
    revisions that bucket `key` needs branch pages."""
    load_kubernetes_like_keys(cluster, count=2500)
    client = cluster.client()
    try:
        lease = client.lease(600)
        for name in ("kube-scheduler", "kube-controller-manager"):
            client.put(f"/registry/leases/kube-system/{name}", f"held by {name}", lease=lease)
        client.transaction(
            compare=[client.transactions.version("/registry/txn/a") == 0],
            success=[
                client.transactions.put("/registry/txn/a", "1"),
                client.transactions.put("/registry/txn/b", "2"),
                client.transactions.delete("/registry/pods/ns-0/obj-00000"),
            ],
            failure=[],
        )
        client.put("/registry/configmaps/kube-system/big", os.urandom(20_000))
        client.delete_prefix("/registry/secrets/ns-1/")
        _, meta = client.get("/registry/txn/a")
        client.compact(meta.mod_revision - 50)
        for i in range(40):
            client.put(f"/registry/events/default/e-{i % 7}", f"after compaction {i}")
    finally:
        client.close()


def live_key_count(cluster: EtcdCluster) -> int:
    output = cluster.etcdctl("get", "", "--prefix", "--keys-only", "-w", "json").stdout
    count: int = json.loads(output)["count"]
    return count


def test_figures_match_etcd_snapshot_status(etcd_any: EtcdCluster, tmp_path: Path) -> None:
    busy_history(etcd_any)
    live = live_key_count(etcd_any)
    snapshot = tmp_path / "snapshot.db"
    etcd_any.etcdctl("snapshot", "save", str(snapshot))

    status = verify_snapshot(snapshot)

    assert ours(status) == {
        k: v for k, v in etcd_status(etcd_any.binaries, snapshot).items() if k in ETCD_FIGURES
    }
    assert status.live_keys == live
    data = snapshot.read_bytes()
    assert status.sha256 == hashlib.sha256(data[:-32]).hexdigest() == data[-32:].hex()
    assert status.file_size == len(data) == status.total_size + 32
    assert status.cluster_version == etcd_any.binaries.version.rsplit(".", 1)[0] + ".0"
    assert status.storage_version is None


# --- one real 3.5 snapshot, damaged in every way ---------------------------------------------


@dataclass(frozen=True)
class Sample:
    snapshot: bytes
    raw_db: Path
    binaries: EtcdBinaries
    status: SnapshotStatus
    page_size: int
    metas: list[int]
    branches: list[int]
    leaves: list[int]
    overflow: list[int]
    free: list[int]


def page_map(path: Path) -> tuple[int, list[int], list[int], list[int], list[int]]:
    """Page size, branch pages, leaf pages, overflow pages and free pages of a database."""
    with BoltReader(path) as reader:
        for bucket in reader.buckets():
            for _ in reader.leaves(bucket):
                pass
        heads = reader.reached_pages()
        page_size, pgid = reader.page_size, reader.pgid
    data = path.read_bytes()
    kinds: dict[int, list[int]] = {BRANCH_PAGE: [], LEAF_PAGE: []}
    overflow: list[int] = []
    for head in sorted(heads):
        _, flags, _, extra = PAGE_HEADER.unpack_from(data, head * page_size)
        kinds[flags].append(head)
        overflow.extend(range(head + 1, head + 1 + extra))
    free = sorted(set(range(2, pgid)) - heads - set(overflow))
    return page_size, kinds[BRANCH_PAGE], kinds[LEAF_PAGE], overflow, free


@pytest.fixture(scope="module")
def sample(
    etcd_binaries_35: EtcdBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Sample]:
    work = tmp_path_factory.mktemp("verify-sample")
    cluster = start_cluster(etcd_binaries_35, work / "etcd")
    try:
        busy_history(cluster)
        cluster.etcdctl("snapshot", "save", str(work / "snapshot.db"))
    finally:
        cluster.stop()
    raw_db = work / "raw.db"
    shutil.copyfile(cluster.members[0].data_dir / "member" / "snap" / "db", raw_db)
    page_size, branches, leaves, overflow, free = page_map(work / "snapshot.db")
    yield Sample(
        snapshot=(work / "snapshot.db").read_bytes(),
        raw_db=raw_db,
        binaries=etcd_binaries_35,
        status=verify_snapshot(work / "snapshot.db"),
        page_size=page_size,
        metas=[0, 1],
        branches=branches,
        leaves=leaves,
        overflow=overflow,
        free=free,
    )


def rejected(tmp_path: Path, data: bytes, **options: object) -> str:
    path = tmp_path / "damaged.db"
    path.write_bytes(data)
    with pytest.raises(SnapshotInvalid) as caught:
        verify_snapshot(path, **options)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message and "\n" not in message and len(message) < 300
    return message


def resealed(data: bytes | bytearray) -> bytes:
    """Damage under a matching trailer, as if etcd itself had sent it: only the walk judges."""
    body = bytes(data[:-32])
    return body + hashlib.sha256(body).digest()


def test_the_sample_has_every_kind_of_page(sample: Sample) -> None:
    assert sample.branches and sample.leaves and sample.overflow and sample.free


def test_every_truncation_is_rejected(sample: Sample, tmp_path: Path) -> None:
    data = sample.snapshot
    size = len(data)
    page = sample.page_size
    cuts = {0, 1, 16, 100, page - 1, page, 2 * page, 3 * page + 7, size // 3, size // 2}
    cuts |= {size - 33, size - 32, size - 31, size - 2, size - 1}
    cuts |= set(random.Random(7).sample(range(size), 40))
    for cut in sorted(cuts):
        message = rejected(tmp_path, data[:cut])
        if cut == 0:
            assert message.startswith("not an etcd snapshot: the file is empty")
        elif 16 + 4 <= cut != size - 32:
            assert message.startswith("truncated: "), message
    assert "(a raw member/snap/db copy?)" in rejected(tmp_path, data[:-32])
    assert rejected(tmp_path, data[:-33], require_trailer=False).startswith("truncated: ")
    message = rejected(tmp_path, data[: -32 - page], require_trailer=False)
    assert message.startswith(f"truncated: file holds {size - 32 - page} bytes, database needs")


def flip_offsets(sample: Sample) -> dict[str, list[int]]:
    """Offsets in each kind of region: headers, element tables, keys and values."""
    page = sample.page_size
    rng = random.Random(11)

    def within(pages: list[int], spots: list[int], count: int = 6) -> list[int]:
        chosen = rng.sample(pages, min(count, len(pages)))
        return [p * page + spot for p in chosen for spot in spots]

    return {
        "meta": [m * page + spot for m in sample.metas for spot in (16, 24, 32, 56, 64, 72)],
        "branch": within(sample.branches, [0, 8, 10, 12, 16, 20, 24, page // 2]),
        "leaf": within(sample.leaves, [0, 8, 10, 12, 16, 20, 24, 28, 40, page // 2, page - 1]),
        "overflow": within(sample.overflow, [0, 100, page - 1]),
        "free": within(sample.free, [0, 8, 16, page // 2]),
    }


def test_a_flipped_bit_anywhere_is_caught_by_the_trailer(sample: Sample, tmp_path: Path) -> None:
    data = sample.snapshot
    regions = flip_offsets(sample)
    regions["trailer"] = [len(data) - 32, len(data) - 17, len(data) - 1]
    for region, offsets in regions.items():
        for offset in offsets:
            damaged = bytearray(data)
            damaged[offset] ^= 1 << (offset % 8)
            message = rejected(tmp_path, bytes(damaged))
            assert "does not match the snapshot's trailer" in message, (region, offset, message)


def test_damage_under_a_matching_trailer_is_judged_by_the_walk(
    sample: Sample, tmp_path: Path
) -> None:
    """Structure damage is named; damage to data bytes the check cannot see gives other
    figures, the very ones etcd's tool gives; damage to free pages changes nothing at all,
    which is why the trailer matters."""
    data = sample.snapshot
    path = tmp_path / "resealed.db"
    for region, offsets in flip_offsets(sample).items():
        for offset in offsets:
            damaged = bytearray(data)
            damaged[offset] ^= 0xFF
            path.write_bytes(resealed(damaged))
            try:
                status = verify_snapshot(path)
            except SnapshotInvalid as exc:
                assert "\n" not in str(exc)
                assert region != "free"
                continue
            if region == "free":
                assert ours(status) == ours(sample.status)
            else:
                assert ours(status) == {
                    k: v for k, v in etcd_status(sample.binaries, path).items() if k in ours(status)
                }


def test_structure_damage_is_named(sample: Sample, tmp_path: Path) -> None:
    data = sample.snapshot
    page = sample.page_size
    branch = sample.branches[0]
    leaf = sample.leaves[len(sample.leaves) // 2]
    first_child = branch * page + PAGE_HEADER.size + 8
    cases = [
        (leaf * page, (leaf + 1).to_bytes(8, "little"), f"page {leaf} carries id {leaf + 1}"),
        (leaf * page + 8, (0x10).to_bytes(2, "little"), "expected a branch or leaf page"),
        (leaf * page + 12, (1 << 30).to_bytes(4, "little"), "past the high-water mark"),
        (leaf * page + 10, (0xFFFF).to_bytes(2, "little"), "elements that do not fit"),
        (first_child, branch.to_bytes(8, "little"), f"page {branch} is referenced twice"),
        (first_child, (1).to_bytes(8, "little"), "page 1 lies outside the database"),
    ]
    for offset, value, reason in cases:
        damaged = bytearray(data)
        damaged[offset : offset + len(value)] = value
        assert reason in rejected(tmp_path, resealed(damaged)), reason
    both_metas = bytearray(data)
    for meta in sample.metas:
        both_metas[meta * page + 72] ^= 0xFF  # the checksum
    message = rejected(tmp_path, resealed(both_metas))
    assert message == "not a bbolt database: no valid bbolt meta page (bad meta checksum in both)"


def test_the_streamed_digest_stands_in_for_hashing(sample: Sample, tmp_path: Path) -> None:
    path = tmp_path / "snapshot.db"
    path.write_bytes(sample.snapshot)
    digest = sample.snapshot[-32:].hex()
    assert verify_snapshot(path, expected_sha256=digest) == sample.status
    wrong = hashlib.sha256(b"another stream").hexdigest()
    assert "does not match the snapshot's trailer" in rejected(
        tmp_path, sample.snapshot, expected_sha256=wrong
    )


def test_a_raw_member_database(sample: Sample) -> None:
    with pytest.raises(SnapshotInvalid, match=r"raw member/snap/db copy\?"):
        verify_snapshot(sample.raw_db)
    status = verify_snapshot(sample.raw_db, require_trailer=False)
    assert not status.has_trailer
    assert status.sha256 == hashlib.sha256(sample.raw_db.read_bytes()).hexdigest()
    assert ours(status) == {
        k: v for k, v in etcd_status(sample.binaries, sample.raw_db).items() if k in ETCD_FIGURES
    }


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: b"", "not an etcd snapshot: the file is empty"),
        (lambda s: b"apiVersion: v1\nkind: Secret\n" * 40, "not an etcd snapshot: a text file"),
        (lambda s: gzip.compress(s), "not an etcd snapshot: gzip-compressed data"),
        (
            lambda s: zstandard.ZstdCompressor().compress(s),
            "not an etcd snapshot: zstd-compressed data",
        ),
        (lambda s: random.Random(3).randbytes(64 * 1024), "not an etcd snapshot: no bbolt header"),
        (
            lambda s: resealed(random.Random(4).randbytes(64 * 1024) + bytes(32)),
            "no valid bbolt meta page (bad bbolt magic in both)",
        ),
    ],
    ids=["empty", "text", "gzip", "zstd", "random", "random-with-trailer"],
)
def test_foreign_files_are_named(
    sample: Sample, tmp_path: Path, make: Callable[[bytes], bytes], reason: str
) -> None:
    assert reason in rejected(tmp_path, make(sample.snapshot))
