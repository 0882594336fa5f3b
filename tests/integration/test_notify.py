"""`[[notify]]`: healthchecks.io-style pings and JSON webhooks, against an HTTP server started by
each test on loopback (one that answers, one that fails with 500, one that never answers)."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from etcd_backupd.config import parse_config
from etcd_backupd.cycle import CycleResult, DestinationResult
from etcd_backupd.drill import DrillResult
from etcd_backupd.notify import Notifications
from tests.harness.cli import Running, run_cli
from tests.harness.cli import write_config as config_file
from tests.harness.etcd import EtcdCluster, free_port
from tests.harness.receiver import HANG, Receiver


def targets(*entries: dict[str, Any]) -> Any:
    data = {"destination": [{"name": "l", "type": "local", "path": "/x"}], "notify": list(entries)}
    return parse_config(data).notify


def result(ok: bool) -> CycleResult:
    now = datetime.now(UTC)
    return CycleResult(
        started=now,
        finished=now,
        ok=ok,
        destinations=(DestinationResult("s3", ok, error=None if ok else "bucket is gone"),),
        error=None if ok else "destination s3: bucket is gone",
        failed_stage=None if ok else "store",
        exit_code=0 if ok else 5,
    )


def test_ping_follows_the_healthchecks_protocol_and_webhooks_their_events(
    receiver: Receiver,
) -> None:
    notifications = Notifications(
        targets(
            {"type": "ping", "url": f"{receiver.url}/ping/abc-123"},
            {"type": "webhook", "url": f"{receiver.url}/hook", "on": ["failure", "drill_failure"]},
            {"type": "webhook", "url": f"{receiver.url}/all", "on": ["success", "failure"]},
        ),
        host="node-1",
        cluster="prod",
    )
    notifications.cycle_started()
    notifications.cycle_finished(result(True))
    notifications.cycle_started()
    notifications.cycle_finished(result(False))
    notifications.drill_finished(DrillResult("s3", "etcd-snapshot-prod-x.db", True, 3.0))
    notifications.drill_finished(DrillResult("s3", "etcd-snapshot-prod-x.db", False, 3.0, "bad"))
    notifications.close()

    assert receiver.paths() == [
        "/ping/abc-123/start",
        "/ping/abc-123",
        "/all",
        "/ping/abc-123/start",
        "/ping/abc-123/fail",
        "/hook",
        "/all",
        "/hook",
    ]
    _, fail_body, fail_type = receiver.requests[4]
    assert fail_body == b"backup failed at store: destination s3: bucket is gone"
    assert fail_type == "text/plain"
    failure = json.loads(receiver.requests[5][1])
    assert receiver.requests[5][2] == "application/json"
    assert failure["event"] == "failure"
    assert (failure["host"], failure["cluster"], failure["failed_stage"]) == (
        "node-1",
        "prod",
        "store",
    )
    assert failure["destinations"] == [{"name": "s3", "ok": False, "error": "bucket is gone"}]
    assert json.loads(receiver.requests[2][1])["event"] == "success"
    drill = json.loads(receiver.requests[7][1])
    assert (drill["event"], drill["error"], drill["destination"]) == ("drill_failure", "bad", "s3")


def test_a_failing_receiver_is_retried_then_logged(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answers["/hook"] = 500
    receiver.answers["/gone"] = 404
    notifications = Notifications(
        targets(
            {"type": "webhook", "url": f"{receiver.url}/hook", "retries": 2, "retry_backoff": 0.05},
            {"type": "webhook", "url": f"{receiver.url}/gone", "retries": 2, "retry_backoff": 0.05},
        ),
        cluster="prod",
    )
    with caplog.at_level(logging.INFO, logger="etcd_backupd.notify"):
        notifications.cycle_finished(result(False))
        notifications.close()
    # a server error is retried; a 404 will not get better
    assert receiver.paths() == ["/hook", "/hook", "/hook", "/gone"]
    assert f"notification to {receiver.url} failed after 3 attempt(s): HTTP 500" in caplog.text
    assert "failed after 1 attempt(s): HTTP 404" in caplog.text
    assert "/hook" not in caplog.text  # a ping URL's path is its secret


def test_a_receiver_that_never_answers_costs_only_its_timeout(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answers["/ping/x/start"] = HANG
    notifications = Notifications(
        targets(
            {
                "type": "ping",
                "url": f"{receiver.url}/ping/x",
                "timeout": 0.5,
                "retries": 1,
                "retry_backoff": 0.1,
            }
        ),
        cluster=None,
    )
    began = time.monotonic()
    notifications.cycle_started()
    notifications.cycle_finished(result(True))
    queued = time.monotonic() - began
    notifications.close()
    waited = time.monotonic() - began
    assert queued < 0.2  # the cycle never waits for a notification
    assert 1.0 <= waited < 5  # two attempts of 0.5 s, then the success ping
    assert receiver.paths() == ["/ping/x/start", "/ping/x/start", "/ping/x"]
    assert "failed after 2 attempt(s): timed out" in caplog.text


def write_config(tmp_path: Path, endpoints: list[str], receiver: Receiver, **sections: Any) -> Path:
    return config_file(
        tmp_path,
        endpoints,
        etcd={"cluster_name": "prod", "dial_timeout": 1.0},
        notify=[
            {"type": "ping", "url": f"{receiver.url}/ping/uuid"},
            {
                "type": "webhook",
                "url": f"{receiver.url}/broken",
                "on": ["success", "failure"],
                "retries": 1,
                "retry_backoff": 0.05,
            },
        ],
        **sections,
    )


def test_once_pings_and_a_broken_webhook_never_fails_the_backup(
    etcd35: EtcdCluster, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.answers["/broken"] = 500
    config = write_config(tmp_path, etcd35.endpoints, receiver)
    done = run_cli("once", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert receiver.paths() == ["/ping/uuid/start", "/ping/uuid", "/broken", "/broken"]
    assert "failed after 2 attempt(s): HTTP 500; the backup is not affected" in done.stderr
    success = json.loads(receiver.requests[receiver.paths().index("/broken")][1])
    assert success["event"] == "success"
    assert success["snapshot"] in os.listdir(tmp_path / "backups")


def test_once_that_fails_pings_fail_with_the_error(receiver: Receiver, tmp_path: Path) -> None:
    config = write_config(tmp_path, [f"http://127.0.0.1:{free_port()}"], receiver)
    failed = run_cli("once", "--config", str(config))
    assert failed.returncode == 3
    fail = [body for path, body, _ in receiver.requests if path == "/ping/uuid/fail"]
    assert len(fail) == 1
    assert fail[0].startswith(b"backup failed at snapshot: ")
    hooks = [json.loads(body) for path, body, _ in receiver.requests if path == "/broken"]
    assert [h["event"] for h in hooks] == ["failure"]
    assert hooks[0]["error"] in fail[0].decode()


def test_the_daemon_pings_for_its_cycles(
    etcd35: EtcdCluster, receiver: Receiver, tmp_path: Path
) -> None:
    # catch-up backs up at start: there is no backup, and a per-minute schedule has just fired
    config = write_config(
        tmp_path,
        etcd35.endpoints,
        receiver,
        schedule={"cron": "* * * * *"},
        metrics={"listen": ""},
    )
    daemon = Running(config, tmp_path / "daemon.log")
    try:
        daemon.wait(lambda: "/ping/uuid" in receiver.paths(), 60, lambda: repr(receiver.paths()))
    finally:
        assert daemon.stop() == 0
    assert receiver.paths()[:2] == ["/ping/uuid/start", "/ping/uuid"]
