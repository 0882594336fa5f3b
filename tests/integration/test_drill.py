"""Drills keep the restored keyspace to themselves (unix sockets in a 0700 scratch directory, no
TCP port) and read clusters that have auth enabled with the configured user."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from etcd_backupd import drill as drilling
from etcd_backupd.config import ENV_ETCD_PASSWORD, load_config
from etcd_backupd.destinations import build
from etcd_backupd.drill import drill
from etcd_backupd.etcd import identify_cluster
from etcd_backupd.restore import find_tools
from tests.harness.cli import run_cli, write_config
from tests.harness.etcd import EtcdCluster, enable_auth, load_kubernetes_like_keys


def drill_config(tmp: Path, cluster: EtcdCluster, **etcd: str) -> Path:
    drill = {"bin_dir": str(cluster.binaries.etcd.parent), "expect_prefixes": ["/registry/pods/"]}
    return write_config(tmp, cluster, mode=0o600, etcd=etcd, drill=drill)


def tcp_listeners(pid: int) -> set[str]:
    """The TCP sockets process `pid` listens on, as inodes."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    listening.add(fields[9])
    return listening


def test_a_drill_serves_the_keyspace_on_unix_sockets_only(
    etcd_any: EtcdCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_kubernetes_like_keys(etcd_any, count=30)
    config_path = drill_config(tmp_path, etcd_any)
    backed_up = run_cli("once", "--config", str(config_path))
    assert backed_up.returncode == 0, backed_up.stderr
    seen: dict[str, Any] = {}
    check = drilling._check_drill_member

    def observed(*args: Any) -> None:
        check(*args)  # the member is up and answered
        process = args[-1]
        data_dir = next(a for a in process.args if a.startswith("--data-dir="))
        work = Path(data_dir.partition("=")[2]).parent
        seen["tcp"] = tcp_listeners(process.pid)
        seen["scratch mode"] = stat.S_IMODE(work.stat().st_mode)
        seen["sockets"] = sorted(p.name for p in work.iterdir() if stat.S_ISSOCK(p.lstat().st_mode))

    monkeypatch.setattr(drilling, "_check_drill_member", observed)
    config = load_config(config_path)
    result = drill(
        build(config.destination[0]),
        find_tools(config.drill.bin_dir),
        config.drill.expect_prefixes,
        cluster=identify_cluster(config.etcd),
        now=datetime.now(UTC),
        scratch_root=tmp_path,
    )
    assert result.ok, result.error
    assert seen == {
        "tcp": set(),
        "scratch mode": 0o700,
        "sockets": ["drill-client:2379", "drill-peer:2380"],
    }
    assert [p.name for p in tmp_path.glob("etcd-backupd-drill-*")] == []


def test_a_drill_of_an_auth_enabled_cluster_reads_with_the_configured_user(
    etcd_any: EtcdCluster, tmp_path: Path
) -> None:
    load_kubernetes_like_keys(etcd_any, count=30)
    enable_auth(etcd_any, "s3cret-root")
    etcd_auth = etcd_any
    assert etcd_auth.password is not None
    secret = tmp_path / "password"
    secret.write_text(etcd_auth.password + "\n")
    secret.chmod(0o600)
    config = drill_config(tmp_path, etcd_auth, username="root", password_file=str(secret))
    backed_up = run_cli("once", "--config", str(config))
    assert backed_up.returncode == 0, backed_up.stderr
    passed = run_cli("drill", "--config", str(config))
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "passed" in passed.stdout
    assert etcd_auth.password not in passed.stdout + passed.stderr

    # the password may come from the environment instead, as for backups
    from_env = drill_config(tmp_path, etcd_auth, username="root")
    passed = run_cli(
        "drill", "--config", str(from_env), env={ENV_ETCD_PASSWORD: etcd_auth.password}
    )
    assert passed.returncode == 0, passed.stdout + passed.stderr

    without_user = drill_config(tmp_path, etcd_auth)
    failed = run_cli("drill", "--config", str(without_user))
    assert failed.returncode == 6
    assert "the snapshot's cluster has auth enabled: set etcd.username" in failed.stdout
