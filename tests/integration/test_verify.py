"""`verify` agrees with etcd's own `snapshot status` and rejects every damaged file."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from etcd_backupd.errors import SnapshotInvalid
from etcd_backupd.snapshot.bbolt import BoltReader
from etcd_backupd.snapshot.status import verify_snapshot
from tests.harness.cli import run_cli
from tests.harness.etcd import EtcdCluster, load_kubernetes_like_keys


def save_snapshot(cluster: EtcdCluster, target: Path) -> Path:
    cluster.etcdctl("snapshot", "save", str(target))
    return target


def etcd_tool_status(cluster: EtcdCluster, snapshot: Path) -> dict[str, int]:
    tool = cluster.binaries.etcdutl or cluster.binaries.etcdctl
    output = subprocess.run(
        [str(tool), "snapshot", "status", "-w", "json", str(snapshot)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    ).stdout
    parsed: dict[str, int] = json.loads(output)
    return parsed


def busy_history(cluster: EtcdCluster) -> dict[str, bytes]:
    """Overwrites, deletes, a transaction, leases and a compaction: every kind of record."""
    live = load_kubernetes_like_keys(cluster, count=300)
    client = cluster.client()
    lease = client.lease(600)
    client.put("/registry/leases/kube-system/kube-scheduler", "holder", lease=lease)
    live["/registry/leases/kube-system/kube-scheduler"] = b"holder"
    client.transaction(
        compare=[client.transactions.version("/registry/txn/a") == 0],
        success=[
            client.transactions.put("/registry/txn/a", "1"),
            client.transactions.put("/registry/txn/b", "2"),
        ],
        failure=[],
    )
    live.update({"/registry/txn/a": b"1", "/registry/txn/b": b"2"})
    client.delete_prefix("/registry/configmaps/ns-1/")
    live = {k: v for k, v in live.items() if not k.startswith("/registry/configmaps/ns-1/")}
    _, metadata = client.get("/registry/txn/a")
    client.compact(metadata.mod_revision // 2)
    client.close()
    return live


def test_figures_match_etcd_tool(etcd_any: EtcdCluster, tmp_path: Path) -> None:
    live = busy_history(etcd_any)
    snapshot = save_snapshot(etcd_any, tmp_path / "snap.db")

    ours = verify_snapshot(snapshot)
    theirs = etcd_tool_status(etcd_any, snapshot)

    assert (ours.hash, ours.revision, ours.total_keys, ours.total_size) == (
        theirs["hash"],
        theirs["revision"],
        theirs["totalKey"],
        theirs["totalSize"],
    )
    assert ours.live_keys == len(live)
    data = snapshot.read_bytes()
    assert ours.sha256 == hashlib.sha256(data[:-32]).hexdigest() == data[-32:].hex()
    assert ours.file_size == len(data) == ours.total_size + 32


def test_auth_and_many_revisions_match(etcd_auth: EtcdCluster, tmp_path: Path) -> None:
    client = etcd_auth.client()
    for i in range(3000):
        client.put(f"/registry/events/default/e-{i % 400}", f"event {i}" * 8)
    client.close()
    snapshot = save_snapshot(etcd_auth, tmp_path / "snap.db")
    ours = verify_snapshot(snapshot)
    theirs = etcd_tool_status(etcd_auth, snapshot)
    assert (ours.hash, ours.revision, ours.total_keys) == (
        theirs["hash"],
        theirs["revision"],
        theirs["totalKey"],
    )
    assert ours.live_keys == 400


@pytest.fixture
def good_snapshot(etcd35: EtcdCluster, tmp_path: Path) -> bytes:
    load_kubernetes_like_keys(etcd35, count=400)
    client = etcd35.client()
    client.put("/registry/configmaps/big/blob", os.urandom(20_000))
    client.close()
    return save_snapshot(etcd35, tmp_path / "good.db").read_bytes()


def rejected(tmp_path: Path, data: bytes, name: str = "bad.db") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SnapshotInvalid) as caught:
        verify_snapshot(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_every_truncation_is_rejected(good_snapshot: bytes, tmp_path: Path) -> None:
    size = len(good_snapshot)
    for cut in sorted(
        {0, 1, 100, 4096, 8192, size // 3, size // 2, size - 33, size - 32, size - 1}
    ):
        rejected(tmp_path, good_snapshot[:cut])


def test_bit_flips_anywhere_are_rejected(good_snapshot: bytes, tmp_path: Path) -> None:
    size = len(good_snapshot)
    offsets = {16, 20, 40, 80, 4096 + 16, 4096 + 72, size - 1, size - 32}
    offsets.update(range(0, size, max(1, size // 97)))
    for offset in sorted(offsets):
        damaged = bytearray(good_snapshot)
        damaged[offset] ^= 0x10
        rejected(tmp_path, bytes(damaged))


def with_fresh_trailer(data: bytearray) -> bytes:
    """Damage the database but give it a matching trailer: only the walk can catch it now."""
    body = bytes(data[:-32])
    return body + hashlib.sha256(body).digest()


def reachable_pages(path: Path) -> set[int]:
    with BoltReader(path) as reader:
        for name, value, _ in reader.items(reader.root_bucket()):
            for _ in reader.items(reader.bucket_of(name, value)):
                pass
        return reader.reached_pages()


def test_structure_damage_is_caught_by_the_walk(good_snapshot: bytes, tmp_path: Path) -> None:
    page_size = 4096
    good = tmp_path / "good.db"
    good.write_bytes(good_snapshot)
    reachable = reachable_pages(good)
    assert len(reachable) >= 3
    for pgid in sorted(reachable):
        damaged = bytearray(good_snapshot)
        offset = pgid * page_size
        damaged[offset : offset + 8] = (pgid + 1).to_bytes(8, "little")
        assert "carries id" in rejected(tmp_path, with_fresh_trailer(damaged))
        damaged = bytearray(good_snapshot)
        damaged[offset + 8] = 0x10
        assert "expected a branch or leaf" in rejected(tmp_path, with_fresh_trailer(damaged))

    both_metas = bytearray(good_snapshot)
    both_metas[16 + 60] ^= 0xFF
    both_metas[page_size + 16 + 60] ^= 0xFF
    assert "no valid bbolt meta page" in rejected(tmp_path, with_fresh_trailer(both_metas))


def test_one_damaged_meta_falls_back_to_the_other(good_snapshot: bytes, tmp_path: Path) -> None:
    damaged = bytearray(good_snapshot)
    damaged[16 + 60] ^= 0xFF
    path = tmp_path / "one-meta.db"
    path.write_bytes(with_fresh_trailer(damaged))
    assert verify_snapshot(path).revision > 0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not whole pages plus 32"),
        (b"apiVersion: v1\nkind: Secret\n", "not whole pages plus 32"),
        (gzip.compress(os.urandom(50_000)), "not whole pages plus 32"),
        (os.urandom(3 * 4096) + hashlib.sha256(b"x").digest(), "does not match"),
    ],
    ids=["empty", "text", "gzip", "random-with-trailer-shape"],
)
def test_foreign_files(tmp_path: Path, content: bytes, reason: str) -> None:
    assert reason in rejected(tmp_path, content)


def test_random_pages_with_a_valid_trailer(tmp_path: Path) -> None:
    body = os.urandom(4 * 4096)
    assert "no valid bbolt meta page" in rejected(tmp_path, body + hashlib.sha256(body).digest())


def test_cli_verify_on_damage_is_one_line(good_snapshot: bytes, tmp_path: Path) -> None:
    path = tmp_path / "cut.db"
    path.write_bytes(good_snapshot[:-100])
    for output in ("text", "json"):
        result = run_cli("verify", str(path), "--output", output)
        assert result.returncode == 4
        assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["valid"] is False
    missing = run_cli("verify", str(tmp_path / "nope.db"))
    assert missing.returncode == 4
    assert "No such file" in missing.stderr


def test_cli_verify_reads_compressed_files(good_snapshot: bytes, tmp_path: Path) -> None:
    import zstandard

    plain = tmp_path / "s.db"
    plain.write_bytes(good_snapshot)
    expected = verify_snapshot(plain)
    for name, packed in [
        ("s.db.zst", zstandard.ZstdCompressor().compress(good_snapshot)),
        ("s.db.gz", gzip.compress(good_snapshot)),
    ]:
        (tmp_path / name).write_bytes(packed)
        result = run_cli("verify", str(tmp_path / name), "-o", "json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["hash"] == expected.hash
        (tmp_path / name).write_bytes(packed[: len(packed) // 2])
        cut = run_cli("verify", str(tmp_path / name))
        assert cut.returncode == 4
