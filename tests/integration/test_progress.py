"""Long work says how far it has come: the snapshot stream's bytes, rate and ETA; the steps of
restore and drill."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from etcd_backupd import etcd
from etcd_backupd.config import parse_config
from etcd_backupd.cycle import run_cycle
from tests.harness.cli import run_cli
from tests.harness.etcd import EtcdCluster, load_large_values


def test_a_snapshot_stream_logs_its_progress(
    etcd35: EtcdCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    load_large_values(etcd35, 40)
    monkeypatch.setattr(etcd, "PROGRESS_INTERVAL", 0.01)
    # Status's dbSize trails the database until the backend commits; right after a burst of
    # writes it can be far below what the stream then carries. Report it lagging on purpose.
    real_status = etcd.EtcdSource._status

    def lagging_status(self: etcd.EtcdSource, endpoint: str) -> tuple[Any, etcd.MemberStatus]:
        client, status = real_status(self, endpoint)
        return client, dataclasses.replace(status, db_size=status.db_size // 2)

    monkeypatch.setattr(etcd.EtcdSource, "_status", lagging_status)
    config = parse_config(
        {
            "etcd": {"endpoints": etcd35.endpoints},
            "destination": [{"name": "l", "type": "local", "path": str(tmp_path / "b")}],
        }
    )
    with caplog.at_level(logging.INFO, logger="etcd_backupd.etcd"):
        result = run_cycle(config)
    assert result.ok, result.error
    lines = [r.getMessage() for r in caplog.records if r.name == "etcd_backupd.etcd"]
    progress = [
        line
        for line in lines
        if re.fullmatch(
            r"snapshot from m1 \(http://127\.0\.0\.1:\d+, leader\): [\d.]+ MiB of [\d.]+ MiB "
            r"\(\d+%\) at [\d.]+ MiB/s(, about \d+ s left)?",
            line,
        )
    ]
    assert progress, lines
    # once data flows, the total is etcd's own count of the stream: the snapshot's size
    # (its data part, without the 32-byte SHA-256 trailer)
    assert result.manifest is not None
    snapshot_mib = (result.manifest.size - 32) / 2**20
    flowing = [line for line in progress if not line.split("): ")[1].startswith("0.0 MiB")]
    assert flowing, progress
    totals = {float(line.split(" of ")[1].split(" MiB")[0]) for line in flowing}
    assert totals == {round(snapshot_mib, 1)}, progress
    assert not any("past the size" in line for line in lines), lines


def test_restore_says_which_step_it_is_in(etcd35: EtcdCluster, tmp_path: Path) -> None:
    snapshot = tmp_path / "s.db"
    etcd35.etcdctl("snapshot", "save", str(snapshot))
    restored = run_cli(
        "restore",
        str(snapshot),
        "--data-dir",
        str(tmp_path / "restored"),
        "--etcd-bin-dir",
        str(etcd35.binaries.etcd.parent),
        timeout=120,
    )
    assert restored.returncode == 0, restored.stderr
    first = restored.stderr.index("restore step 1 of 2: decompressing and verifying s.db")
    second = restored.stderr.index(f"restore step 2 of 2: restoring into {tmp_path / 'restored'}")
    assert first < second
