"""restore, restore-plan and drills against real etcd 3.4 and 3.5 binaries."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from etcd_backupd.config import parse_config
from etcd_backupd.daemon import Daemon
from tests.harness.etcd import (
    EtcdBinaries,
    EtcdCluster,
    EtcdMember,
    free_port,
    load_kubernetes_like_keys,
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etcd_backupd.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def dump(binaries: EtcdBinaries, endpoint: str) -> dict[str, str]:
    output = subprocess.run(
        [str(binaries.etcdctl), f"--endpoints={endpoint}", "get", "", "--prefix", "-w", "json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    ).stdout
    kvs = json.loads(output).get("kvs", [])
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
        for kv in kvs
    }


def start_restored(
    binaries: EtcdBinaries, tmp: Path, name: str, data: Path, peer: str
) -> EtcdCluster:
    client = f"http://127.0.0.1:{free_port()}"
    command = [
        str(binaries.etcd),
        f"--name={name}",
        f"--data-dir={data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
    ]
    member = EtcdMember(name, client, peer, data, tmp / f"{name}-restored.log", command)
    cluster = EtcdCluster([member], binaries)
    member.start()
    try:
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def backup_config(tmp: Path, cluster: EtcdCluster, compression: str = "none") -> Path:
    config = tmp / "config.toml"
    config.write_text(
        f"state_dir = {str(tmp / 'state')!r}\n"
        f"[etcd]\nendpoints = {cluster.endpoints!r}\n"
        "[[destination]]\nname = 'local'\ntype = 'local'\n"
        f"path = {str(tmp / 'backups')!r}\ncompression = {compression!r}\n"
        f"[drill]\nbin_dir = {str(cluster.binaries.etcd.parent)!r}\n"
        "expect_prefixes = ['/registry/pods/', '/calico/']\n"
    )
    return config


def test_restored_member_serves_exactly_the_original_keys(
    etcd_any: EtcdCluster, tmp_path: Path
) -> None:
    load_kubernetes_like_keys(etcd_any, count=120)
    original = dump(etcd_any.binaries, etcd_any.endpoints[0])
    config = backup_config(tmp_path, etcd_any, compression="zstd")
    assert cli("once", "--config", str(config)).returncode == 0
    data = tmp_path / "restored"
    peer = f"http://127.0.0.1:{free_port()}"
    result = cli(
        "restore", "--config", str(config), "--destination", "local", "--snapshot", "latest",
        "--data-dir", str(data), "--name", "r1", "--initial-advertise-peer-urls", peer,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tool = "etcdutl" if etcd_any.binaries.etcdutl else "etcdctl"
    assert tool in result.stdout
    restored = start_restored(etcd_any.binaries, tmp_path, "r1", data, peer)
    try:
        assert dump(etcd_any.binaries, restored.endpoints[0]) == original
    finally:
        restored.stop()


def test_restore_takes_a_compressed_snapshot_by_its_base_name(
    etcd35: EtcdCluster, tmp_path: Path
) -> None:
    config = backup_config(tmp_path, etcd35, compression="zstd")
    assert cli("once", "--config", str(config)).returncode == 0
    stored = next((tmp_path / "backups").glob("*.db.zst")).name
    base = stored.removesuffix(".zst")
    common = ["--config", str(config), "--destination", "local"]

    typo = cli("restore", *common, "--snapshot", base.replace("Z.db", "X.db"),
               "--data-dir", str(tmp_path / "typo"))  # fmt: skip
    assert typo.returncode != 0
    assert f"did you mean {stored!r}?" in typo.stderr
    assert not (tmp_path / "typo").exists()

    restored = cli("restore", *common, "--snapshot", base, "--data-dir", str(tmp_path / "data"))
    assert restored.returncode == 0, restored.stderr
    # the token comes from the snapshot, so a member restored separately gets the same one
    stamp = base.removeprefix("etcd-snapshot-").removesuffix(".db")
    assert restored.stdout.rstrip().endswith(f"cluster token etcd-restore-{stamp}")
    assert (tmp_path / "data" / "member" / "snap" / "db").is_file()


def test_refusals_touch_nothing(etcd35: EtcdCluster, tmp_path: Path) -> None:
    config = backup_config(tmp_path, etcd35)
    assert cli("once", "--config", str(config)).returncode == 0
    snapshot = next((tmp_path / "backups").glob("*.db"))
    bins = str(etcd35.binaries.etcd.parent)

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "member").mkdir()
    refused = cli("restore", str(snapshot), "--data-dir", str(busy), "--etcd-bin-dir", bins)
    assert refused.returncode != 0
    assert "is not empty: refusing to overwrite it" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("busy")) == ["busy"]

    damaged = tmp_path / "damaged.db"
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 3] ^= 1
    damaged.write_bytes(bytes(data))
    refused = cli("restore", str(damaged), "--data-dir", str(tmp_path / "fresh"), "--force",
                  "--etcd-bin-dir", bins)  # fmt: skip
    assert refused.returncode == 4
    assert not (tmp_path / "fresh").exists()

    empty_bin = tmp_path / "no-tools"
    empty_bin.mkdir()
    refused = cli("restore", str(snapshot), "--data-dir", str(tmp_path / "fresh"),
                  "--etcd-bin-dir", str(empty_bin))  # fmt: skip
    assert refused.returncode != 0
    assert "no etcdutl or etcdctl found" in refused.stderr
    assert not (tmp_path / "fresh").exists()
    assert "Traceback" not in refused.stderr

    # a sound snapshot that is not the one its manifest describes is refused too
    manifest_path = next((tmp_path / "backups").glob("*.manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "sha256": "ab" * 32}))
    refused = cli("restore", "--config", str(config), "--destination", "local",
                  "--snapshot", "latest", "--data-dir", str(busy), "--force",
                  "--etcd-bin-dir", bins)  # fmt: skip
    assert refused.returncode == 4
    assert "but its manifest says" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("busy")) == ["busy"]
    manifest_path.write_text(json.dumps(manifest))

    forced = cli(
        "restore", str(snapshot), "--data-dir", str(busy), "--force", "--etcd-bin-dir", bins
    )
    assert forced.returncode == 0, forced.stderr
    aside = [p.name for p in tmp_path.iterdir() if p.name.startswith("busy.before-restore-")]
    assert len(aside) == 1
    assert (tmp_path / aside[0] / "member").is_dir()
    assert (busy / "member" / "snap" / "db").is_file()


def test_restore_plan_restores_a_three_member_cluster(etcd35: EtcdCluster, tmp_path: Path) -> None:
    original = load_kubernetes_like_keys(etcd35, count=80)
    snapshot = tmp_path / "snapshot.db"
    etcd35.etcdctl("snapshot", "save", str(snapshot))
    names = ["etcd1", "etcd2", "etcd3"]
    peers = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    clients = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    tools = [
        "--restore-tool",
        str(etcd35.binaries.etcdutl),
        "--etcdctl",
        str(etcd35.binaries.etcdctl),
    ]
    args = ["restore-plan", "--snapshot", str(snapshot), "--data-dir", "data", *tools]
    for name in names:
        args += ["--member", f"{name}={peers[name]}", "--client-url", f"{name}={clients[name]}"]
    markdown = cli(*args)
    assert markdown.returncode == 0, markdown.stderr
    text = markdown.stdout
    order = ["systemctl stop kube-apiserver", "systemctl stop etcd", "snapshot restore",
             "systemctl start etcd", "endpoint health", "endpoint status -w table",
             "member list", "systemctl start kube-apiserver", "kubectl get nodes"]  # fmt: skip
    positions = [text.index(step) for step in order]
    assert positions == sorted(positions)

    scripts = cli(*args, "--output", "script", "--script-dir", str(tmp_path / "scripts"))
    assert scripts.returncode == 0, scripts.stderr
    members = []
    try:
        for name in names:
            script = (tmp_path / "scripts" / f"restore-{name}.sh").read_text()
            home = tmp_path / name
            home.mkdir()
            # run this member's restore step as the script has it, in the member's own directory
            restore_line = next(line for line in script.splitlines() if "snapshot restore" in line)
            subprocess.run(shlex.split(restore_line), cwd=home, check=True, capture_output=True)
            command = [
                str(etcd35.binaries.etcd), f"--name={name}", "--data-dir=data",
                f"--listen-client-urls={clients[name]}", f"--advertise-client-urls={clients[name]}",
                f"--listen-peer-urls={peers[name]}", f"--initial-advertise-peer-urls={peers[name]}",
            ]  # fmt: skip
            member = EtcdMember(name, clients[name], peers[name], home / "data",
                                tmp_path / f"{name}.log", command)  # fmt: skip
            members.append(member)
        for member in members:
            member._process = subprocess.Popen(
                member.command,
                cwd=member.data_dir.parent,
                stdout=member.log_file.open("wb"),
                stderr=subprocess.STDOUT,
            )
        cluster = EtcdCluster(members, etcd35.binaries)
        cluster.wait_healthy(timeout=60)
        checks = [line for line in script.splitlines() if "--endpoints=" in line]
        for check in checks:
            result = subprocess.run(shlex.split(check.replace("ETCDCTL_API=3 ", "")),
                                    capture_output=True, text=True, check=False)  # fmt: skip
            assert result.returncode == 0, result.stderr
        members_listed = subprocess.run(
            shlex.split(checks[-1].replace("ETCDCTL_API=3 ", "")),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert all(name in members_listed for name in names)
        restored = dump(etcd35.binaries, clients["etcd2"])
        assert restored == {k: v.decode() for k, v in original.items()}
    finally:
        for member in members:
            member.stop()


def test_drills_pass_and_fail_with_metrics(etcd35: EtcdCluster, tmp_path: Path) -> None:
    load_kubernetes_like_keys(etcd35, count=60)
    config_path = backup_config(tmp_path, etcd35)
    assert cli("once", "--config", str(config_path)).returncode == 0
    passed = cli("drill", "--config", str(config_path))
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "drill of etcd-snapshot-" in passed.stdout and "passed" in passed.stdout

    import tomllib

    config = parse_config(tomllib.loads(config_path.read_text()))
    daemon = Daemon(config_path, config)
    daemon._drill()
    registry = daemon.metrics.registry
    last = registry.get_sample_value(
        "etcd_backup_drill_last_success_timestamp_seconds", {"destination": "local"}
    )
    assert last is not None and last > time.time() - 60

    manifest_path = next((tmp_path / "backups").glob("*.manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["revision"] += 1
    manifest_path.write_text(json.dumps(manifest))
    failed = cli("drill", "--config", str(config_path))
    assert failed.returncode == 6
    assert "FAILED" in failed.stdout and "manifest says revision" in failed.stdout
    daemon._drill()
    failures = {"destination": "local"}
    assert registry.get_sample_value("etcd_backup_drill_failures_total", failures) == 1


@pytest.mark.parametrize("flag", ["--member", "--client-url"])
def test_restore_plan_rejects_bad_members(flag: str) -> None:
    args = ["restore-plan", "--snapshot", "/s.db", "--member", "etcd1=https://10.0.0.1:2380"]
    result = cli(*args, flag, "etcd2")
    assert result.returncode != 0
    assert "is not NAME=URL" in result.stderr


def test_restore_plan_takes_the_members_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "[[destination]]\nname = 'local'\ntype = 'local'\n"
        f"path = {str(tmp_path / 'backups')!r}\n"
        "[restore]\n"
        "members = { etcd1 = 'https://10.0.0.1:2380', etcd2 = 'https://10.0.0.2:2380' }\n"
        "client_urls = { etcd2 = 'https://10.0.0.2:12379' }\n"
    )
    plan = cli("restore-plan", "--config", str(config), "--snapshot", "/s.db")
    assert plan.returncode == 0, plan.stderr
    for name, peer in [("etcd1", "https://10.0.0.1:2380"), ("etcd2", "https://10.0.0.2:2380")]:
        assert f"--name {name}" in plan.stdout or f"--name={name}" in plan.stdout
        assert peer in plan.stdout
    assert "https://10.0.0.1:2379" in plan.stdout and "https://10.0.0.2:12379" in plan.stdout

    given = cli("restore-plan", "--config", str(config), "--snapshot", "/s.db",
                "--member", "etcd7=https://10.0.0.7:2380")  # fmt: skip
    assert given.returncode == 0, given.stderr
    assert "10.0.0.7:2380" in given.stdout and "10.0.0.1" not in given.stdout

    nobody = cli("restore-plan", "--snapshot", "/s.db")
    assert nobody.returncode != 0
    assert "no members: give --member NAME=PEER_URL" in nobody.stderr
