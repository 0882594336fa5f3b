"""SIGTERM interrupts work: a stalled etcd stream and a hung S3 upload are cancelled, and the
daemon exits within shutdown_timeout plus a few seconds, leaving no .part file and no upload
it could abort. READY goes out before the destinations are read."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cli import Running, start_cli, write_toml
from tests.harness.etcd import EtcdCluster, free_port, load_large_values
from tests.harness.faultproxy import FaultProxy
from tests.harness.polling import wait_until
from tests.harness.s3 import MotoServer, make_bucket, s3_environment
from tests.integration.test_s3 import BUCKET, config_data, uploads_in_progress

SHUTDOWN_TIMEOUT = 1.0


def daemon_config(tmp_path: Path, data: dict[str, Any], **schedule: Any) -> Path:
    settings = {"cron": "0 0 1 1 *", "shutdown_timeout": SHUTDOWN_TIMEOUT, **schedule}
    return write_toml(
        tmp_path / "config.toml",
        {**data, "schedule": settings, "metrics": {"listen": f"127.0.0.1:{free_port()}"}},
    )


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def run(config: Path, env: dict[str, str] | None = None) -> Running:
        running = Running(
            config, tmp_path / f"daemon{len(started)}.log", {**s3_environment(), **(env or {})}
        )
        started.append(running)
        return running

    yield run
    for running in started:
        running.kill()


def stop_timed(running: Running) -> float:
    began = time.monotonic()
    assert running.stop() == 0, running.text()
    return time.monotonic() - began


def test_sigterm_cancels_a_stalled_etcd_stream(
    etcd35: EtcdCluster, tmp_path: Path, start: Callable[..., Running]
) -> None:
    load_large_values(etcd35, 100)
    data = config_data(tmp_path, etcd35, "http://127.0.0.1:1")
    data["destination"] = data["destination"][:1]
    data["etcd"]["stall_timeout"] = 120
    running = start(daemon_config(tmp_path, data))  # the catch-up starts a backup at once
    member = etcd35.members[0]
    assert member.pid is not None
    wait_until(
        lambda: list((tmp_path / "local").glob("*.part")), 60, interval=0.005, message=running.text
    )
    os.kill(member.pid, signal.SIGSTOP)
    try:
        took = stop_timed(running)
    finally:
        os.kill(member.pid, signal.SIGCONT)
    assert took < SHUTDOWN_TIMEOUT + 5, running.text()
    assert "backup cancelled" in running.text()
    assert not list((tmp_path / "local").glob("*"))
    assert not list((tmp_path / "state").rglob("*.part"))


def test_sigterm_cancels_a_hung_s3_upload(
    etcd35: EtcdCluster,
    tmp_path: Path,
    s3: MotoServer,
    fault_proxy: FaultProxy,
    start: Callable[..., Running],
) -> None:
    load_large_values(etcd35, 12)
    client = s3.client()
    make_bucket(client, BUCKET)
    fault_proxy.hang("UploadPart")
    data = config_data(tmp_path, etcd35, fault_proxy.endpoint_url, local=False)
    running = start(daemon_config(tmp_path, data))
    wait_until(lambda: fault_proxy.counts["UploadPart"], 60, interval=0.05, message=running.text)
    took = stop_timed(running)
    assert took < SHUTDOWN_TIMEOUT + 5, running.text()
    assert uploads_in_progress(client) == []
    assert not list((tmp_path / "state").rglob("*.part"))


def test_ready_comes_before_reading_a_hung_destination(
    etcd35: EtcdCluster, tmp_path: Path, fault_proxy: FaultProxy, start: Callable[..., Running]
) -> None:
    fault_proxy.hang("*")
    data = config_data(tmp_path, etcd35, fault_proxy.endpoint_url, local=False, read_timeout=60)
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        began = time.monotonic()
        running = start(daemon_config(tmp_path, data), {"NOTIFY_SOCKET": str(path)})
        messages: list[str] = []

        def ready() -> bool:
            messages.append(sock.recv(4096).decode())
            return "READY=1" in messages[-1]

        # each receive waits for the next message, up to the socket's timeout
        wait_until(ready, 10, interval=0, message=lambda: repr(messages))
        assert time.monotonic() - began < 10
    assert stop_timed(running) < SHUTDOWN_TIMEOUT + 5


def test_sigterm_ends_once_with_a_hung_s3_upload(
    etcd35: EtcdCluster, tmp_path: Path, s3: MotoServer, fault_proxy: FaultProxy
) -> None:
    load_large_values(etcd35, 12)
    client = s3.client()
    make_bucket(client, BUCKET)
    fault_proxy.hang("UploadPart")
    config = write_toml(
        tmp_path / "config.toml",
        config_data(tmp_path, etcd35, fault_proxy.endpoint_url, local=False),
    )
    process = start_cli(
        "once", "--config", str(config), stderr=subprocess.PIPE, env=s3_environment()
    )
    wait_until(lambda: fault_proxy.counts["UploadPart"], 60, interval=0.05)
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - began < 5, stderr
    assert process.returncode in (5, 130), stderr
    assert "Traceback" not in stderr
    assert uploads_in_progress(client) == []
    assert not list((tmp_path / "state").rglob("*.part"))


def test_a_store_that_never_answers_at_start_holds_up_no_backup(
    etcd35: EtcdCluster, tmp_path: Path, fault_proxy: FaultProxy, start: Callable[..., Running]
) -> None:
    fault_proxy.hang("*")
    # retried requests would hold the start-up reads for 2 x 4 x 5 s: stall_timeout bounds each
    bounds = {"read_timeout": 5, "connect_timeout": 1, "max_attempts": 4, "stall_timeout": 1}
    data = config_data(tmp_path, etcd35, fault_proxy.endpoint_url, **bounds)
    began = time.monotonic()
    running = start(daemon_config(tmp_path, data))  # the catch-up starts a backup at once
    wait_until(lambda: list((tmp_path / "local").glob("*.manifest.json")), 20, message=running.text)
    assert time.monotonic() - began < 20, running.text()
    assert "listing got no answer within 1 s" in running.text()
    assert stop_timed(running) < SHUTDOWN_TIMEOUT + 5
