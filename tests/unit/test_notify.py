"""Notifications as their receivers see them: what each event sends, to which URL, with which
headers; how failures are retried, spaced and logged; and that nothing a receiver does reaches
the backup. Against a real HTTP server on loopback, one per test."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etcd_backupd import __version__
from etcd_backupd.config import NotifyConfig, parse_config
from etcd_backupd.cycle import CycleResult, DestinationResult
from etcd_backupd.drill import DrillResult
from etcd_backupd.notify import Notifications
from tests.harness.backups import make_manifest
from tests.harness.etcd import free_port
from tests.harness.receiver import DROP, HANG, Receiver

CREATED = datetime(2026, 11, 23, 22, 45, tzinfo=UTC)


def targets(*entries: dict[str, Any]) -> list[NotifyConfig]:
    data = {"destination": [{"name": "l", "type": "local", "path": "/x"}], "notify": list(entries)}
    return parse_config(data).notify


def succeeded() -> CycleResult:
    manifest = make_manifest("prod", CREATED, revision=4711, size=123456)
    return CycleResult(
        started=CREATED,
        finished=CREATED + timedelta(seconds=2.5),
        ok=True,
        manifest=manifest,
        destinations=(DestinationResult("local", True), DestinationResult("s3", True)),
    )


def failed(error: str = "no etcd member answered") -> CycleResult:
    return CycleResult(
        started=CREATED,
        finished=CREATED + timedelta(seconds=1),
        ok=False,
        error=error,
        failed_stage="snapshot",
    )


def sent(receiver: Receiver, path: str) -> list[bytes]:
    return [body for p, body, _ in receiver.requests if p == path]


def test_a_success_pings_its_summary_and_posts_the_backup(receiver: Receiver) -> None:
    notifications = Notifications(
        targets(
            {"type": "ping", "url": f"{receiver.url}/ping/abc/"},
            {"type": "webhook", "url": f"{receiver.url}/hook", "on": ["success"]},
        ),
        host="node-1",
        cluster="configured-name",
    )
    before = datetime.now(UTC)
    notifications.cycle_started()
    notifications.cycle_finished(succeeded())
    notifications.close()

    # the trailing slash of a ping URL does not double
    assert receiver.paths() == ["/ping/abc/start", "/ping/abc", "/hook"]
    snapshot = "etcd-snapshot-prod-20261123T224500Z.db"
    summary = f"{snapshot}: revision 4711, 123456 bytes, 2.5 s"
    assert sent(receiver, "/ping/abc") == [summary.encode()]
    assert sent(receiver, "/ping/abc/start") == [b""]
    payload = json.loads(sent(receiver, "/hook")[0])
    assert datetime.fromisoformat(payload.pop("time")) >= before
    assert payload == {
        "event": "success",
        "host": "node-1",
        "cluster": "prod",  # the snapshot's cluster name, not the configured one
        "tool_version": __version__,
        "summary": summary,
        "snapshot": snapshot,
        "revision": 4711,
        "size": 123456,
        "error": None,
        "failed_stage": None,
        "duration_seconds": 2.5,
        "destinations": [
            {"name": "local", "ok": True, "error": None},
            {"name": "s3", "ok": True, "error": None},
        ],
    }
    for headers in receiver.headers:
        assert headers["User-Agent"] == f"etcd-backupd/{__version__}"
    assert [content_type for _, _, content_type in receiver.requests] == [
        "text/plain",
        "text/plain",
        "application/json",
    ]


def test_a_failure_names_the_configured_cluster_and_no_snapshot(receiver: Receiver) -> None:
    notifications = Notifications(
        targets({"type": "webhook", "url": f"{receiver.url}/hook"}), host="h", cluster="prod"
    )
    notifications.cycle_finished(failed())
    notifications.close()
    payload = json.loads(sent(receiver, "/hook")[0])
    assert payload["event"] == "failure"
    assert payload["cluster"] == "prod"
    assert (payload["snapshot"], payload["revision"], payload["size"]) == (None, None, None)
    assert payload["summary"] == "backup failed at snapshot: no etcd member answered"
    assert payload["destinations"] == []


def test_each_target_gets_only_its_events(receiver: Receiver) -> None:
    notifications = Notifications(
        targets(
            {"type": "ping", "url": f"{receiver.url}/ping"},
            {"type": "webhook", "url": f"{receiver.url}/default"},
            {"type": "webhook", "url": f"{receiver.url}/success", "on": ["success"]},
            {"type": "webhook", "url": f"{receiver.url}/drills", "on": ["drill_failure"]},
        ),
        cluster="prod",
    )
    notifications.cycle_finished(succeeded())
    notifications.drill_finished(DrillResult("s3", "etcd-snapshot-prod-x.db", True, 2.0))
    notifications.drill_finished(DrillResult("s3", "", False, 2.0, "no snapshot to drill"))
    notifications.cycle_finished(failed())
    notifications.close()
    # by default a webhook hears of failures; a ping hears of cycles, never of drills
    assert receiver.paths() == [
        "/ping",
        "/success",
        "/default",
        "/drills",
        "/ping/fail",
        "/default",
    ]
    drill = json.loads(sent(receiver, "/drills")[0])
    assert drill["snapshot"] is None
    assert drill["summary"] == "drill of - from s3 failed: no snapshot to drill"


def test_a_long_error_is_cut_to_what_a_ping_keeps(receiver: Receiver) -> None:
    notifications = Notifications(targets({"type": "ping", "url": receiver.url}), cluster=None)
    notifications.cycle_finished(failed("x" * 50_000))
    notifications.close()
    (body,) = sent(receiver, "/fail")
    assert len(body) == 10_000
    assert body.startswith(b"backup failed at snapshot: xxx")


@pytest.mark.parametrize(("answer", "problem"), [(429, "HTTP 429"), (503, "HTTP 503")])
def test_busy_and_server_errors_are_retried_with_a_doubling_pause(
    receiver: Receiver, caplog: pytest.LogCaptureFixture, answer: int, problem: str
) -> None:
    receiver.answers["/hook"] = answer
    notifications = Notifications(
        targets(
            {"type": "webhook", "url": f"{receiver.url}/hook", "retries": 2, "retry_backoff": 0.2}
        ),
        cluster="prod",
    )
    with caplog.at_level(logging.INFO, logger="etcd_backupd.notify"):
        notifications.cycle_finished(failed())
        notifications.close()
    assert receiver.paths() == ["/hook"] * 3
    first, second, third = receiver.arrivals
    assert 0.2 <= second - first < 0.2 + 1.5
    assert 0.4 <= third - second < 0.4 + 1.5
    assert f"failed ({problem}); retry 1 of 2 in 0.2 s" in caplog.text
    assert f"failed ({problem}); retry 2 of 2 in 0.4 s" in caplog.text
    assert f"failed after 3 attempt(s): {problem}; the backup is not affected" in caplog.text


def test_a_refused_or_dropped_connection_is_retried_and_logged_without_the_path(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answers["/ping/secret-uuid"] = DROP
    closed = f"http://127.0.0.1:{free_port()}"
    notifications = Notifications(
        targets(
            {"type": "ping", "url": f"{receiver.url}/ping/secret-uuid", "retry_backoff": 0.05},
            {"type": "ping", "url": f"{closed}/ping/other-uuid", "retry_backoff": 0.05},
        ),
        cluster="prod",
    )
    with caplog.at_level(logging.INFO, logger="etcd_backupd.notify"):
        notifications.cycle_finished(succeeded())
        notifications.close()
    assert receiver.paths() == ["/ping/secret-uuid"] * 3  # the default: two retries
    assert (
        f"notification to {receiver.url} failed after 3 attempt(s): "
        "Remote end closed connection without response" in caplog.text
    )
    assert f"notification to {closed} failed after 3 attempt(s): " in caplog.text
    assert "uuid" not in caplog.text


def test_nothing_a_receiver_does_reaches_the_cycle(receiver: Receiver) -> None:
    receiver.answers["/hang"] = HANG
    receiver.answers["/drop"] = DROP
    receiver.answers["/error"] = 500
    notifications = Notifications(
        targets(
            *(
                {"type": kind, "url": f"{receiver.url}/{path}", "timeout": 0.3, "retries": 0}
                for kind in ("ping", "webhook")
                for path in ("hang", "drop", "error")
            ),
            {"type": "ping", "url": f"http://127.0.0.1:{free_port()}", "retries": 0},
        ),
        cluster="prod",
    )
    began = time.monotonic()
    notifications.cycle_started()
    notifications.cycle_finished(failed())
    notifications.drill_finished(DrillResult("s3", "s.db", False, 1.0, "bad"))
    queued = time.monotonic() - began
    notifications.close()
    assert queued < 0.2
    # a later notification still goes out: the failures cost the sending thread nothing
    ok = Notifications(targets({"type": "ping", "url": f"{receiver.url}/ok"}), cluster=None)
    ok.cycle_finished(succeeded())
    ok.close()
    assert receiver.paths()[-1] == "/ok"


def test_a_reconfigured_target_takes_the_next_notification(receiver: Receiver) -> None:
    receiver.answers["/old/start"] = HANG
    notifications = Notifications(
        targets({"type": "ping", "url": f"{receiver.url}/old", "timeout": 0.3, "retries": 0}),
        cluster="before",
    )
    notifications.cycle_started()  # still being sent when the config changes
    notifications.reconfigure(
        targets({"type": "webhook", "url": f"{receiver.url}/new", "on": ["failure"]}), "after"
    )
    notifications.cycle_finished(failed())
    notifications.close()
    assert receiver.paths() == ["/old/start", "/new"]
    assert json.loads(sent(receiver, "/new")[0])["cluster"] == "after"


def test_close_waits_for_what_is_queued_and_drops_what_comes_after(receiver: Receiver) -> None:
    notifications = Notifications(
        targets({"type": "ping", "url": f"{receiver.url}/p", "retries": 0}), cluster=None
    )
    for _ in range(5):
        notifications.cycle_started()
    notifications.close()
    assert receiver.paths() == ["/p/start"] * 5
    notifications.cycle_started()
    notifications.cycle_finished(succeeded())
    assert receiver.paths() == ["/p/start"] * 5
