"""Runs that collide: several `once` at the same instant against one destination (a timer and a
CronJob retried beside it). Every stored snapshot stays intact and matches its manifest; each run
either stores a backup or refuses cleanly; no run removes what another one wrote."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from etcd_backupd.config import Config, LocalDestination, parse_config
from etcd_backupd.cycle import CycleResult, run_cycle
from etcd_backupd.destinations.local import LocalDirectory
from etcd_backupd.manifest import MANIFEST_SUFFIX
from etcd_backupd.runlock import DestinationLock
from tests.harness.cli import Running, start_cli, write_toml
from tests.harness.etcd import EtcdCluster, free_port, load_large_values
from tests.harness.faultproxy import FaultProxy
from tests.harness.polling import wait_until
from tests.harness.s3 import MotoServer, make_bucket
from tests.integration.test_daemon import scrape
from tests.integration.test_s3 import BUCKET, config_data, keys, uploads_in_progress

REFUSED = 75


def intact_local(directory: Path) -> list[str]:
    """The snapshots in a directory, each checked against its manifest and etcd's trailer."""
    names = sorted(p.name for p in directory.iterdir() if p.name.endswith(".db"))
    for name in names:
        data = (directory / name).read_bytes()
        manifest = json.loads((directory / (name + MANIFEST_SUFFIX)).read_text())
        assert_matches(data, manifest)
    manifests = sorted(p.name for p in directory.glob("*" + MANIFEST_SUFFIX))
    assert manifests == [n + MANIFEST_SUFFIX for n in names]
    assert not list(directory.glob("*.part"))
    return names


def assert_matches(data: bytes, manifest: dict[str, Any]) -> None:
    assert len(data) == manifest["size"]
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    assert data[-32:].hex() == manifest["sha256"]


def intact_s3(client: Any) -> list[str]:
    names = [k.removeprefix("prod/") for k in keys(client, "prod/") if k.endswith(".db")]
    for name in names:
        data = client.get_object(Bucket=BUCKET, Key="prod/" + name)["Body"].read()
        body = client.get_object(Bucket=BUCKET, Key=f"prod/manifests/{name}{MANIFEST_SUFFIX}")
        assert_matches(data, json.loads(body["Body"].read()))
    assert uploads_in_progress(client) == []
    return names


def start_once(config: Path, count: int) -> list[subprocess.CompletedProcess[str]]:
    """`count` runs of `once`, released at the same instant."""
    processes = [
        start_cli("once", "--config", str(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(count)
    ]
    finished = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        finished.append(
            subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        )
    return finished


def assert_clean(runs: list[subprocess.CompletedProcess[str]]) -> None:
    for run in runs:
        assert run.returncode in (0, REFUSED), run.stderr
        assert "Traceback" not in run.stderr and "internal error" not in run.stderr
        if run.returncode == REFUSED:
            assert "another run" in run.stderr + run.stdout
    assert any(run.returncode == 0 for run in runs)


@pytest.mark.parametrize("count", [2, 3])
def test_once_runs_at_the_same_instant_into_one_directory(
    etcd35: EtcdCluster, tmp_path: Path, count: int
) -> None:
    load_large_values(etcd35, 20)
    data = config_data(tmp_path, etcd35, "http://127.0.0.1:1")
    data["destination"] = data["destination"][:1]
    runs = start_once(write_toml(tmp_path / "config.toml", data), count)
    assert_clean(runs)
    stored = intact_local(tmp_path / "local")
    assert 1 <= len(stored) <= sum(run.returncode == 0 for run in runs)


@pytest.mark.parametrize("count", [2, 3])
def test_once_runs_at_the_same_instant_into_s3_and_a_directory(
    etcd35: EtcdCluster, tmp_path: Path, s3: MotoServer, fault_proxy: FaultProxy, count: int
) -> None:
    client = s3.client()
    make_bucket(client, BUCKET)
    load_large_values(etcd35, 20)
    fault_proxy.serialize("CompleteMultipartUpload", "PutObject")
    endpoint = fault_proxy.endpoint_url
    config = write_toml(tmp_path / "config.toml", config_data(tmp_path, etcd35, endpoint))
    runs = start_once(config, count)
    assert_clean(runs)
    assert intact_local(tmp_path / "local")
    assert intact_s3(client)


def same_second_cycles(
    config_dict: dict[str, Any], count: int, *, hosts: bool
) -> list[CycleResult]:
    """`count` cycles in threads whose clocks read the same second: they pick the same name.
    With `hosts`, each has a state_dir of its own, as runs on different hosts do."""
    configs = [
        parse_config({**config_dict, "state_dir": f"{config_dict['state_dir']}-{i}"})
        if hosts
        else parse_config(config_dict)
        for i in range(count)
    ]
    moment = datetime.now(UTC).replace(microsecond=0)
    start = threading.Barrier(count)
    results: list[CycleResult] = []

    def one(config: Config) -> None:
        start.wait()
        results.append(run_cycle(config, clock=lambda: moment))

    threads = [threading.Thread(target=one, args=(config,)) for config in configs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == count
    return results


@pytest.mark.parametrize("hosts", [False, True], ids=["one-host", "three-hosts"])
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_runs_of_the_same_second_keep_one_intact_backup_locally(
    etcd35: EtcdCluster, tmp_path: Path, hosts: bool, compression: str
) -> None:
    load_large_values(etcd35, 10)
    data = config_data(tmp_path, etcd35, "http://127.0.0.1:1")
    data["destination"] = [{**data["destination"][0], "compression": compression}]
    results = same_second_cycles(data, 3, hosts=hosts)
    assert sorted(r.exit_code for r in results) == [0, REFUSED, REFUSED]
    for refused in (r for r in results if not r.ok):
        assert refused.error is not None and "another run" in refused.error
    if compression == "none":
        assert len(intact_local(tmp_path / "local")) == 1
    else:
        assert len(list((tmp_path / "local").glob("*.db.zst"))) == 1
        assert not list((tmp_path / "local").glob("*.part"))
    assert not list(tmp_path.glob("state*/spool/*"))


def test_runs_of_the_same_second_keep_one_intact_backup_in_s3(
    etcd35: EtcdCluster, tmp_path: Path, s3: MotoServer, fault_proxy: FaultProxy
) -> None:
    client = s3.client()
    make_bucket(client, BUCKET)
    load_large_values(etcd35, 10)
    fault_proxy.serialize("CompleteMultipartUpload", "PutObject")
    config = config_data(tmp_path, etcd35, fault_proxy.endpoint_url, local=False)
    results = same_second_cycles(config, 3, hosts=True)
    assert sorted(r.exit_code for r in results) == [0, REFUSED, REFUSED]
    for refused in (r for r in results if not r.ok):
        assert refused.error is not None and "stored by another run" in refused.error
    assert len(intact_s3(client)) == 1
    assert not list(tmp_path.glob("state*/spool/*"))


def test_the_daemon_leaves_a_destination_another_run_holds(
    etcd35: EtcdCluster, tmp_path: Path
) -> None:
    data = config_data(tmp_path, etcd35, "http://127.0.0.1:1")
    data["destination"] = data["destination"][:1]
    port = free_port()
    config = write_toml(
        tmp_path / "config.toml",
        {**data, "schedule": {"cron": "0 0 1 1 *"}, "metrics": {"listen": f"127.0.0.1:{port}"}},
    )
    settings = parse_config(data).destination[0]
    assert isinstance(settings, LocalDestination)
    destination = LocalDirectory(settings)
    held = DestinationLock(tmp_path / "state", "local", destination.identity())
    running = Running(config, tmp_path / "daemon.log")
    try:
        running.wait_for("is backing up into it; this run leaves it to that one")
        running.wait_for("metrics on")
        wait_until(
            lambda: 'result="skipped"} 1.0' in scrape(port),
            10,
            interval=0.2,
            message=lambda: scrape(port),
        )
        assert 'result="failure"} 0.0' in scrape(port)
        assert "retry" not in running.text()
    finally:
        assert running.stop() == 0
        held.release()


def test_a_store_without_conditional_writes_is_asked_first(
    etcd35: EtcdCluster, tmp_path: Path, s3: MotoServer, fault_proxy: FaultProxy
) -> None:
    client = s3.client()
    make_bucket(client, BUCKET)
    fault_proxy.fail_next(1, 501, "NotImplemented", operation="CompleteMultipartUpload")
    fault_proxy.fail_next(1, 501, "NotImplemented", operation="PutObject")
    config = parse_config(config_data(tmp_path, etcd35, fault_proxy.endpoint_url, local=False))
    moment = datetime.now(UTC).replace(microsecond=0)
    first = run_cycle(config, clock=lambda: moment)
    assert first.ok, first.error
    assert fault_proxy.counts["HeadObject"] >= 2
    fault_proxy.fail_next(1, 501, "NotImplemented", operation="CompleteMultipartUpload")
    again = run_cycle(config, clock=lambda: moment)
    assert again.exit_code == REFUSED
    assert again.error is not None and "stored by another run" in again.error
    assert len(intact_s3(client)) == 1
