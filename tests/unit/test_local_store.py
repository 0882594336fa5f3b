"""Storing into a local directory a file of its own, compressed while the snapshot streams:
written back to disk as it grows, so the fsync at commit finds only the tail; a failure of that
write-back fails the destination as the fsync would, and leaves neither part file nor backup."""

from __future__ import annotations

import errno
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from etcd_backupd.config_destinations import LocalDestination
from etcd_backupd.destinations import SpooledSnapshot
from etcd_backupd.destinations import local as local_module
from etcd_backupd.destinations.local import LocalDirectory
from etcd_backupd.errors import DestinationError
from etcd_backupd.manifest import snapshot_name
from etcd_backupd.snapshot.status import verify_snapshot
from tests.harness.backups import make_manifest
from tests.unit.test_etcd36 import etcd_snapshot

MOMENT = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
NAME = snapshot_name("prod", MOMENT)
DATA = etcd_snapshot(None)[0]


class Disk:
    """Stands in for the write-back (its own tests are in test_writeback.py) and records, in
    order, how far the file had grown each time it was told, its end and the fsyncs; the
    write-back may fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fails_with: int | None = None) -> None:
        self.events: list[str] = []
        self.fails_with = fails_with
        fsync = os.fsync

        def recorded_fsync(fd: Any) -> None:
            self.events.append("fsync")
            fsync(fd)

        monkeypatch.setattr(os, "fsync", recorded_fsync)
        monkeypatch.setattr(local_module, "WriteBack", self._write_back)

    def _write_back(self, fd: int) -> Disk:
        os.fstat(fd)
        return self

    def grown(self, size: int) -> None:
        self.events.append("grown")
        if self.fails_with is not None:
            raise OSError(self.fails_with, os.strerror(self.fails_with))

    def finish(self) -> None:
        self.events.append("finish")

    def close(self) -> None:
        self.events.append("close")


def spooled(tmp_path: Path) -> SpooledSnapshot:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / NAME).write_bytes(DATA)
    status = verify_snapshot(spool / NAME)
    return SpooledSnapshot(spool / NAME, status, status.sha256)


def store(tmp_path: Path, **settings: Any) -> LocalDirectory:
    return LocalDirectory(
        LocalDestination(type="local", name="local", path=tmp_path / "backups", **settings)
    )


def test_a_compressed_part_is_written_back_while_the_snapshot_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = spooled(tmp_path)
    disk = Disk(monkeypatch)
    destination = store(tmp_path, compression="gzip")
    upload = destination.begin(NAME)
    for offset in range(0, len(DATA), 1024):
        upload.write(DATA[offset : offset + 1024])
    assert disk.events == ["grown"] * 7  # as the snapshot streamed, before its commit
    upload.commit(snapshot, make_manifest("prod", MOMENT))
    assert disk.events[7:10] == ["finish", "fsync", "close"]


def test_a_failed_write_back_fails_the_destination_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Disk(monkeypatch, fails_with=errno.EIO)
    destination = store(tmp_path, compression="gzip")
    upload = destination.begin(NAME)
    with pytest.raises(DestinationError, match=f"cannot store {NAME}.*: Input/output error"):
        upload.write(DATA[:1024])
    upload.abort()
    assert list(destination.path.iterdir()) == []


def test_a_write_back_failure_met_at_commit_fails_it_as_the_fsync_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch)
    destination = store(tmp_path, compression="gzip")
    upload = destination.begin(NAME)
    upload.write(DATA)

    def fails_at_the_end() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(disk, "finish", fails_at_the_end)
    with pytest.raises(DestinationError, match=f"cannot store {NAME}.*: No space left on device"):
        upload.commit(spooled(tmp_path), make_manifest("prod", MOMENT))
    assert list(destination.path.iterdir()) == []
    assert "fsync" not in disk.events
