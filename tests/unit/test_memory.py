"""What the daemon holds between cycles: S3 clients share botocore's service models, and a cycle
hands back what it freed once it is reported."""

from __future__ import annotations

import gc
import threading
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from etcd_backupd import scheduler as scheduler_module
from etcd_backupd.config import parse_config
from etcd_backupd.config_destinations import S3Destination
from etcd_backupd.cycle import CycleResult
from etcd_backupd.destinations.s3 import S3Bucket
from etcd_backupd.memory import release_freed_memory, return_free_heap
from etcd_backupd.scheduler import Scheduler


def _s3(tmp_path: Path, name: str, secret: str) -> S3Destination:
    secret_file = tmp_path / f"{name}.secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    settings = parse_config(
        {
            "destination": [
                {
                    "name": name,
                    "type": "s3",
                    "bucket": "bucket-1",
                    "region": "us-east-1",
                    "access_key_id": f"key-{name}",
                    "secret_access_key_file": str(secret_file),
                }
            ]
        }
    ).destination[0]
    assert isinstance(settings, S3Destination)
    return settings


def _credentials(client: Any) -> tuple[str, str]:
    credentials = client._request_signer._credentials
    return credentials.access_key, credentials.secret_key


def test_s3_clients_share_the_service_models_and_read_their_own_credentials(
    tmp_path: Path,
) -> None:
    first = S3Bucket(_s3(tmp_path, "a", "secret-1")).client
    rotated = _s3(tmp_path, "a", "secret-2")
    second = S3Bucket(rotated).client
    other = S3Bucket(_s3(tmp_path, "b", "secret-3")).client
    assert first._loader is second._loader is other._loader
    # a secret rotated on disk reaches the next cycle's client
    assert _credentials(first) == ("key-a", "secret-1")
    assert _credentials(second) == ("key-a", "secret-2")
    assert _credentials(other) == ("key-b", "secret-3")


class _Garbage:
    def __init__(self) -> None:
        self.me = self


def test_release_freed_memory_collects_reference_cycles() -> None:
    gc.disable()
    try:
        garbage = _Garbage()
        alive = weakref.ref(garbage)
        del garbage
        assert alive() is not None
        release_freed_memory()
        assert alive() is None
    finally:
        gc.enable()


class _Reporting:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def cycle_started(self, names: list[str]) -> None:
        self.calls.append("started")

    def cycle_finished(self, result: CycleResult, names: list[str]) -> None:
        self.calls.append("finished")

    def next_run(self, when: datetime) -> None:
        self.calls.append("next run")

    def schedule_changed(self, intervals: object) -> None:
        self.calls.append("schedule")


def test_a_cycle_hands_memory_back_once_it_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    now = datetime.now(UTC)
    monkeypatch.setattr(
        scheduler_module,
        "run_cycle",
        lambda *args, **kwargs: calls.append("cycle") or CycleResult(now, now, True),
    )
    monkeypatch.setattr(scheduler_module, "release_freed_memory", lambda: calls.append("release"))
    config = parse_config(
        {
            "state_dir": str(tmp_path / "state"),
            "destination": [{"name": "local", "type": "local", "path": str(tmp_path / "b")}],
        }
    )
    scheduler = Scheduler(
        config,
        _Reporting(calls),  # type: ignore[arg-type]
        stopping=threading.Event(),
        cancel=threading.Event(),
    )
    result = scheduler.run_due(["local"])
    assert result is not None and result.ok
    assert calls == ["started", "cycle", "finished", "release"]


def test_returning_the_free_heap_leaves_the_objects_alone() -> None:
    """Unlike the release after a cycle, the return before a verify makes no collection: it
    must cost well under the walk's time, and a collection of a cycle's objects does not."""
    gc.disable()
    try:
        garbage = _Garbage()
        alive = weakref.ref(garbage)
        del garbage
        return_free_heap()
        assert alive() is not None
    finally:
        gc.enable()
        gc.collect()
