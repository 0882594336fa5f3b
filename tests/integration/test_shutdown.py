"""SIGTERM interrupts work: a stalled etcd stream and a hung S3 upload are cancelled, and the
daemon exits within shutdown_timeout plus a few seconds, leaving no .part file and no upload
it could abort. READY goes out before the destinations are read."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.etcd import EtcdCluster, free_port, load_large_values
from tests.harness.faultproxy import FaultProxy
from tests.harness.s3 import MotoServer, make_bucket, s3_environment
from tests.integration.test_daemon import Running
from tests.integration.test_s3 import BUCKET, config_data, uploads_in_progress, write_toml

SHUTDOWN_TIMEOUT = 1.0


def daemon_config(tmp_path: Path, data: dict[str, Any], **schedule: Any) -> Path:
    config = write_toml(tmp_path / "config.toml", data)
    settings = {"cron": "0 0 1 1 *", "shutdown_timeout": SHUTDOWN_TIMEOUT, **schedule}
    lines = ["[schedule]"] + [f"{k} = {v!r}" for k, v in settings.items()]
    lines += ["[metrics]", f"listen = '127.0.0.1:{free_port()}'"]
    with config.open("a") as out:
        out.write("\n".join(lines) + "\n")
    return config


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
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


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
    deadline = time.monotonic() + 60
    while not list((tmp_path / "local").glob("*.part")):
        assert time.monotonic() < deadline, running.text()
        time.sleep(0.005)
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
    deadline = time.monotonic() + 60
    while fault_proxy.counts["UploadPart"] == 0:
        assert time.monotonic() < deadline, running.text()
        time.sleep(0.05)
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
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
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
    process = subprocess.Popen(
        [sys.executable, "-m", "etcd_backupd.cli", "once", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **s3_environment()},
    )
    deadline = time.monotonic() + 60
    while fault_proxy.counts["UploadPart"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - began < 5, stderr
    assert process.returncode in (5, 130), stderr
    assert "Traceback" not in stderr
    assert uploads_in_progress(client) == []
    assert not list((tmp_path / "state").rglob("*.part"))
