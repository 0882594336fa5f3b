"""`etcd-backupd once`, `list`, `verify` and `check-config` as an operator runs them, against real
etcd members started on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from etcd_backupd import cycle
from etcd_backupd.config import ENV_ETCD_PASSWORD, load_config
from etcd_backupd.cycle import run_cycle
from etcd_backupd.errors import DestinationError
from etcd_backupd.manifest import parse_snapshot_name
from etcd_backupd.spool import SpoolWriter
from tests.harness.cli import local_destination, run_cli, start_cli, write_config
from tests.harness.etcd import EtcdCluster, load_kubernetes_like_keys, load_large_values
from tests.harness.polling import wait_until
from tests.harness.tls import make_other_ca


def stored_files(tmp_path: Path) -> list[str]:
    backups = tmp_path / "backups"
    return sorted(p.name for p in backups.iterdir()) if backups.exists() else []


@contextmanager
def small_disk(directory: Path, size: str) -> Iterator[None]:
    """A tmpfs of `size` mounted on `directory` for the test: a disk that fills up."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as a full disk")
    directory.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def etcd_status(cluster: EtcdCluster, snapshot: Path) -> dict[str, int]:
    """What etcd's own tool says of a snapshot file."""
    if cluster.binaries.etcdutl is not None:
        command = [str(cluster.binaries.etcdutl), "snapshot", "status", "-w", "json", str(snapshot)]
    else:
        command = [str(cluster.binaries.etcdctl), "snapshot", "status", "-w", "json", str(snapshot)]
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, env={**os.environ, "ETCDCTL_API": "3"}
    ).stdout
    parsed: dict[str, int] = json.loads(output)
    return parsed


def test_once_stores_a_verified_snapshot_with_manifest(
    etcd_any: EtcdCluster, tmp_path: Path
) -> None:
    load_kubernetes_like_keys(etcd_any, count=120)
    config = write_config(tmp_path, etcd_any, etcd={"cluster_name": "prod"})

    result = run_cli("once", "--config", str(config))
    assert result.returncode == 0, result.stderr

    snapshots = [n for n in stored_files(tmp_path) if n.endswith(".db")]
    assert len(snapshots) == 1
    assert parse_snapshot_name(snapshots[0]) is not None
    assert snapshots[0].startswith("etcd-snapshot-prod-")
    assert stored_files(tmp_path) == [snapshots[0], snapshots[0] + ".manifest.json"]
    snapshot = tmp_path / "backups" / snapshots[0]
    assert snapshot.stat().st_mode & 0o777 == 0o600

    manifest = json.loads((tmp_path / "backups" / (snapshots[0] + ".manifest.json")).read_text())
    theirs = etcd_status(etcd_any, snapshot)
    assert manifest["hash"] == theirs["hash"]
    assert manifest["revision"] == theirs["revision"]
    assert manifest["total_keys"] == theirs["totalKey"]
    assert manifest["total_size"] == theirs["totalSize"]
    assert manifest["size"] == snapshot.stat().st_size
    assert manifest["etcd_version"] == etcd_any.binaries.version
    assert manifest["member"]["endpoint"] == etcd_any.endpoints[0]
    assert manifest["cluster_name"] == "prod"
    assert len(manifest["cluster_id"]) == 16
    for key in ("created", "duration_seconds", "sha256", "tool_version", "live_keys"):
        assert key in manifest
    assert "streaming snapshot from" in result.stderr

    listed = run_cli("list", "--config", str(config), "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert [m["snapshot"] for m in json.loads(listed.stdout)["local"]] == snapshots

    verified = run_cli("verify", str(snapshot), "--output", "json")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["valid"] is True
    assert report["sha256"] == manifest["sha256"]
    assert (report["hash"], report["revision"]) == (theirs["hash"], theirs["revision"])


def test_etcd_restore_accepts_the_stored_file(etcd35: EtcdCluster, tmp_path: Path) -> None:
    load_kubernetes_like_keys(etcd35, count=50)
    config = write_config(tmp_path, etcd35)
    assert run_cli("once", "--config", str(config)).returncode == 0
    snapshot = next((tmp_path / "backups").glob("*.db"))
    assert etcd35.binaries.etcdutl is not None
    restored = subprocess.run(
        [
            str(etcd35.binaries.etcdutl),
            "snapshot",
            "restore",
            str(snapshot),
            "--data-dir",
            str(tmp_path / "restored"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    # etcdutl checks the SHA-256 trailer before it restores anything
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "restored" / "member").is_dir()


def test_json_logs_are_one_object_per_line(etcd35: EtcdCluster, tmp_path: Path) -> None:
    config = write_config(tmp_path, etcd35)
    result = run_cli("--log-format", "json", "once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert any("streaming snapshot from" in e["message"] for e in entries)
    assert all({"time", "level", "message"} <= e.keys() for e in entries)


def test_mutual_tls(etcd_tls: EtcdCluster, tmp_path: Path) -> None:
    tls = etcd_tls.tls
    assert tls is not None
    config = write_config(
        tmp_path, etcd_tls, etcd={"cacert": tls.ca, "cert": tls.client_cert, "key": tls.client_key}
    )
    result = run_cli("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert len(stored_files(tmp_path)) == 2


def test_wrong_ca_fails_clearly_and_stores_nothing(etcd_tls: EtcdCluster, tmp_path: Path) -> None:
    tls = etcd_tls.tls
    assert tls is not None
    other_ca = make_other_ca(tmp_path / "other-ca")
    config = write_config(
        tmp_path,
        etcd_tls,
        etcd={"cacert": other_ca, "cert": tls.client_cert, "key": tls.client_key},
    )
    result = run_cli("once", "--config", str(config))
    assert result.returncode == 3
    assert "no etcd member answered" in result.stderr
    assert "etcd.cacert" in result.stderr
    assert "Traceback" not in result.stderr
    assert stored_files(tmp_path) == []


def test_auth_with_password_from_environment(etcd_auth: EtcdCluster, tmp_path: Path) -> None:
    config = write_config(tmp_path, etcd_auth, etcd={"username": "root"})
    assert etcd_auth.password is not None
    result = run_cli("once", "--config", str(config), env={ENV_ETCD_PASSWORD: etcd_auth.password})
    assert result.returncode == 0, result.stderr
    assert len(stored_files(tmp_path)) == 2


def test_wrong_password_fails_clearly(etcd_auth: EtcdCluster, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("not-the-password\n")
    config = write_config(tmp_path, etcd_auth, etcd={"username": "root", "password_file": secret})
    result = run_cli("once", "--config", str(config))
    assert result.returncode == 3
    assert "password" in result.stderr
    assert "not-the-password" not in result.stderr
    assert stored_files(tmp_path) == []


def test_unreachable_etcd(tmp_path: Path, etcd35: EtcdCluster) -> None:
    config = write_config(
        tmp_path, etcd35, etcd={"endpoints": ["http://127.0.0.1:1"], "dial_timeout": 2}
    )
    result = run_cli("once", "--config", str(config))
    assert result.returncode == 3
    assert "no etcd member answered" in result.stderr
    assert "127.0.0.1:1" in result.stderr
    assert stored_files(tmp_path) == []


def test_destination_path_that_is_a_file(etcd35: EtcdCluster, tmp_path: Path) -> None:
    config = write_config(tmp_path, etcd35)
    (tmp_path / "backups").write_text("not a directory")
    result = run_cli("once", "--config", str(config))
    assert result.returncode == 5
    assert "is not a directory" in result.stderr
    assert (tmp_path / "backups").read_text() == "not a directory"
    assert not list((tmp_path / "state" / "spool").glob("*"))


def test_full_disk_leaves_nothing(etcd35: EtcdCluster, tmp_path: Path) -> None:
    load_kubernetes_like_keys(etcd35, count=50)
    client = etcd35.client()
    client.put("/registry/configmaps/big/blob", os.urandom(600_000))
    client.put("/registry/configmaps/big/blob2", os.urandom(600_000))
    client.close()
    with small_disk(tmp_path / "backups", "512k"):
        result = run_cli("once", "--config", str(write_config(tmp_path, etcd35)))
        assert result.returncode != 0
        assert "No space left on device" in result.stderr
        assert stored_files(tmp_path) == []


def test_three_members_one_down_still_backed_up(etcd_cluster3: EtcdCluster, tmp_path: Path) -> None:
    load_kubernetes_like_keys(etcd_cluster3, count=30)
    leader = etcd_cluster3.leader()
    down = next(m for m in etcd_cluster3.members if m is not leader)
    down.stop()
    config = write_config(tmp_path, etcd_cluster3, etcd={"dial_timeout": 2})
    result = run_cli("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    manifest_file = next((tmp_path / "backups").glob("*.manifest.json"))
    manifest = json.loads(manifest_file.read_text())
    assert manifest["member"]["endpoint"] != down.client_url
    # with a follower still healthy, the leader is spared
    assert manifest["member"]["is_leader"] is False
    assert manifest["member"]["endpoint"] != leader.client_url
    assert down.client_url in result.stderr


def test_kill_mid_stream_leaves_no_backup_and_next_run_cleans_up(
    etcd35: EtcdCluster, tmp_path: Path
) -> None:
    load_large_values(etcd35, 150)
    config = write_config(tmp_path, etcd35)
    backups = tmp_path / "backups"
    process = start_cli("once", "--config", str(config), stderr=subprocess.DEVNULL)
    wait_until(lambda: list(backups.glob("*.part")), 60, interval=0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    leftovers = stored_files(tmp_path)
    assert leftovers, "the run was killed before it started streaming"
    assert all(name.endswith(".part") for name in leftovers)

    for part in backups.glob("*.part"):
        stale = time.time() - 7200
        os.utime(part, (stale, stale))
    result = run_cli("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "left by an interrupted run" in result.stderr
    assert not list(backups.glob("*.part"))
    assert len(stored_files(tmp_path)) == 2


def test_check_config(tmp_path: Path, etcd35: EtcdCluster) -> None:
    good = write_config(tmp_path, etcd35)
    result = run_cli("check-config", "--config", str(good))
    assert result.returncode == 0
    assert "valid" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[etcd]\nendpoints = "http://x:2379"\n[[destination]]\nname="l"\ntype="local"\n')
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert "At 'etcd.endpoints'" in result.stderr
    assert "At 'destination[0].path': required key is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_member_that_stops_sending_is_cut_off_and_nothing_is_left(
    etcd35: EtcdCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_large_values(etcd35, 40)
    config = load_config(write_config(tmp_path, etcd35, etcd={"stall_timeout": 1}))
    member = etcd35.members[0]
    assert member.pid is not None
    stream_chunk = SpoolWriter.write

    def freeze_etcd_at_the_first_chunk(writer: SpoolWriter, chunk: bytes) -> None:
        if not frozen:
            os.kill(member.pid, signal.SIGSTOP)
            frozen.append(True)
        stream_chunk(writer, chunk)

    frozen: list[bool] = []
    monkeypatch.setattr(SpoolWriter, "write", freeze_etcd_at_the_first_chunk)
    began = time.monotonic()
    try:
        result = run_cycle(config)
    finally:
        os.kill(member.pid, signal.SIGCONT)
    assert frozen
    assert time.monotonic() - began < 30
    assert not result.ok
    assert result.exit_code == 3
    assert result.error is not None and "stalled: no data for 1 s" in result.error
    assert stored_files(tmp_path) == []


@pytest.mark.parametrize(("compression", "kept"), [("none", True), ("zstd", False)])
def test_the_spool_reaches_the_disk_only_when_it_is_the_stored_file(
    etcd35: EtcdCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    compression: str,
    kept: bool,
) -> None:
    """A destination storing the snapshot compressed reads the spool in its directory and
    removes it: flushing it to disk would be work for nothing, on the disk the backup goes to."""
    load_large_values(etcd35, 4)
    backups = tmp_path / "backups"
    config = load_config(
        write_config(
            tmp_path, etcd35, destinations=[local_destination(backups, compression=compression)]
        )
    )
    flushed: list[Path] = []
    make_durable = cycle._make_durable
    monkeypatch.setattr(
        cycle, "_make_durable", lambda part: (flushed.append(part), make_durable(part))
    )
    result = run_cycle(config)
    assert result.ok, result.error
    assert bool(flushed) is kept
    assert all(path.parent == backups for path in flushed)


def test_the_stream_s_freed_heap_goes_back_before_the_walk(
    etcd35: EtcdCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk's table of fingerprints is not stacked on the heap the stream freed: the peak
    RSS of a cycle is the larger of the two, not their sum."""
    load_kubernetes_like_keys(etcd35, count=50)
    config = load_config(write_config(tmp_path, etcd35))
    calls: list[str] = []
    real_verify = cycle.verify_snapshot

    def verify(path: Path, **kwargs: Any) -> Any:
        calls.append("verify")
        return real_verify(path, **kwargs)

    monkeypatch.setattr(cycle, "return_free_heap", lambda: calls.append("return heap"))
    monkeypatch.setattr(cycle, "verify_snapshot", verify)
    result = run_cycle(config)
    assert result.ok, result.error
    assert calls == ["return heap", "verify"]


def test_a_full_disk_under_a_compressing_destination_fails_that_destination_alone(
    etcd35: EtcdCluster, tmp_path: Path
) -> None:
    load_kubernetes_like_keys(etcd35, count=50)
    client = etcd35.client()
    client.put("/registry/configmaps/big/blob", os.urandom(900_000))
    client.close()
    small = tmp_path / "small"
    with small_disk(small, "256k"):
        config = write_config(
            tmp_path,
            etcd35,
            destinations=[
                local_destination(tmp_path / "backups"),
                local_destination(small, name="small", compression="zstd"),
            ],
        )
        result = run_cli("once", "--config", str(config))
        assert result.returncode == DestinationError.exit_code, result.stderr
        assert "small" in result.stderr and "No space left on device" in result.stderr
        assert "internal error" not in result.stderr
        assert len(stored_files(tmp_path)) == 2  # the snapshot and its manifest
        assert list(small.iterdir()) == []
