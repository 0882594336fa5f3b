"""One destination failing or hanging costs no other destination its backup, every wait is
bounded, and the error names the destination, not etcd."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etcd_backupd.config import parse_config
from etcd_backupd.cycle import run_cycle
from tests.harness.cli import run_cli, write_config, write_toml
from tests.harness.etcd import EtcdCluster, load_large_values
from tests.harness.faultproxy import FaultProxy
from tests.harness.s3 import MotoServer, make_bucket, s3_environment
from tests.integration.test_collide import intact_local, intact_s3
from tests.integration.test_s3 import BUCKET, config_data, uploads_in_progress


def once(config: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("once", "--config", str(config), env=s3_environment(), timeout=120)


def mount(*arguments: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    done = subprocess.run(["mount", *arguments], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")


@pytest.fixture
def local_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "local"
    directory.mkdir()
    yield directory
    subprocess.run(["umount", str(directory)], capture_output=True, check=False)


def test_a_full_local_disk_costs_s3_nothing(
    etcd35: EtcdCluster, tmp_path: Path, s3: MotoServer, local_dir: Path
) -> None:
    load_large_values(etcd35, 2)
    client = s3.client()
    make_bucket(client, BUCKET)
    mount("-t", "tmpfs", "-o", "size=512k", "tmpfs", str(local_dir))
    result = once(write_toml(tmp_path / "c.toml", config_data(tmp_path, etcd35, s3.endpoint_url)))
    assert result.returncode == 5, result.stderr
    assert "destination 'local'" in result.stderr
    assert "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(local_dir.iterdir()) == []
    assert len(intact_s3(client)) == 1
    assert not list((tmp_path / "state" / "spool").glob("*"))


def test_a_read_only_local_directory_costs_s3_nothing(
    etcd35: EtcdCluster, tmp_path: Path, s3: MotoServer, local_dir: Path
) -> None:
    load_large_values(etcd35, 2)
    client = s3.client()
    make_bucket(client, BUCKET)
    mount("--bind", str(local_dir), str(local_dir))
    mount("-o", "remount,bind,ro", str(local_dir))
    result = once(write_toml(tmp_path / "c.toml", config_data(tmp_path, etcd35, s3.endpoint_url)))
    assert result.returncode == 5, result.stderr
    assert "destination 'local'" in result.stderr
    assert "Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(intact_s3(client)) == 1
    assert uploads_in_progress(client) == []


def s3_with_local(tmp_path: Path, etcd: EtcdCluster, endpoint: str, **s3: Any) -> dict[str, Any]:
    return config_data(tmp_path, etcd, endpoint, **s3)


def test_a_hung_s3_upload_drops_out_alone(
    etcd35: EtcdCluster, tmp_path: Path, s3: MotoServer, fault_proxy: FaultProxy
) -> None:
    load_large_values(etcd35, 12)
    client = s3.client()
    make_bucket(client, BUCKET)
    fault_proxy.hang("UploadPart")
    config = parse_config(
        s3_with_local(tmp_path, etcd35, fault_proxy.endpoint_url, stall_timeout=2, read_timeout=60)
    )
    began = time.monotonic()
    result = run_cycle(config)
    assert time.monotonic() - began < 30
    assert result.exit_code == 5
    assert fault_proxy.counts["UploadPart"] > 0
    local, remote = result.destinations
    assert local.ok and not remote.ok
    assert remote.error is not None and "destination 's3'" in remote.error
    assert "no part of the upload finished for 2 s" in remote.error
    assert result.error is not None and "etcd.stall_timeout" not in result.error
    assert "snapshot stream" not in result.error
    assert len(intact_local(tmp_path / "local")) == 1
    assert uploads_in_progress(client) == []


@pytest.mark.parametrize(
    "bounds",
    [
        {"connect_timeout": 1, "read_timeout": 1, "max_attempts": 2},
        {"stall_timeout": 2},  # requests wait 60 s and are retried: the destination does not
    ],
    ids=["request-timeouts", "stall-timeout"],
)
def test_an_endpoint_that_never_answers_is_given_up_in_bounded_time(
    etcd35: EtcdCluster, tmp_path: Path, fault_proxy: FaultProxy, bounds: dict[str, float]
) -> None:
    fault_proxy.hang("*")
    config = write_toml(
        tmp_path / "c.toml", s3_with_local(tmp_path, etcd35, fault_proxy.endpoint_url, **bounds)
    )
    began = time.monotonic()
    result = once(config)
    assert time.monotonic() - began < 30
    assert result.returncode == 5, result.stderr
    assert "destination 's3'" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(intact_local(tmp_path / "local")) == 1


def test_a_slow_s3_upload_is_given_up_at_its_deadline(
    etcd35: EtcdCluster, tmp_path: Path, s3: MotoServer, fault_proxy: FaultProxy
) -> None:
    load_large_values(etcd35, 12)
    client = s3.client()
    make_bucket(client, BUCKET)
    fault_proxy.delay(1.5, operation="UploadPart")  # answers, slowly: never a stall
    config = parse_config(
        s3_with_local(
            tmp_path,
            etcd35,
            fault_proxy.endpoint_url,
            stall_timeout=60,
            deadline=2,
            max_concurrency=1,
        )
    )
    began = time.monotonic()
    result = run_cycle(config)
    assert time.monotonic() - began < 20
    local, remote = result.destinations
    assert local.ok and not remote.ok
    assert remote.error is not None and "longer than deadline = 2 s" in remote.error
    assert len(intact_local(tmp_path / "local")) == 1
    assert uploads_in_progress(client) == []


def test_check_config_asks_a_store_that_never_answers_once(
    tmp_path: Path, fault_proxy: FaultProxy
) -> None:
    fault_proxy.hang("*")
    s3 = {"name": "s3", "type": "s3", "bucket": "b-1", "region": "us-east-1"}
    config = write_config(
        tmp_path,
        name="c.toml",
        destinations=[
            {
                **s3,
                "endpoint_url": fault_proxy.endpoint_url,
                "connect_timeout": 1,
                "read_timeout": 1,
                "max_attempts": 10,
            }
        ],
    )
    began = time.monotonic()
    result = run_cli("check-config", "--config", str(config), env=s3_environment(), timeout=120)
    assert time.monotonic() - began < 8  # ten attempts of 1 s each would take longer
    assert result.returncode == 0, result.stderr
    assert "destination s3: cannot tell whether pruned backups stay as old versions" in (
        result.stdout
    )
