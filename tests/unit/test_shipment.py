"""The fan-out of one snapshot stream to the destinations: each gets every byte, at its own pace,
and one that fails, refuses, hangs or is cancelled drops out alone."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etcd_backupd.config_destinations import LocalDestination
from etcd_backupd.destinations import Destination, SpooledSnapshot
from etcd_backupd.destinations.local import LocalDirectory
from etcd_backupd.errors import DestinationError
from etcd_backupd.fsutil import part_path
from etcd_backupd.manifest import Manifest, manifest_name, snapshot_name
from etcd_backupd.shipment import Shipment
from etcd_backupd.snapshot.status import SHA256_SIZE, verify_snapshot
from etcd_backupd.spool import SpoolWriter
from tests.harness.backups import make_manifest
from tests.unit.test_etcd36 import etcd_snapshot

MOMENT = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
NAME = snapshot_name("prod", MOMENT)
DATA = etcd_snapshot(b"3.6.0")[0]


class MemoryUpload:
    """Takes the snapshot as it streams, as an S3 multipart upload does. `hold` keeps each
    write waiting (a slow or hung store) until it is set; aborting sets it, as aborting an S3
    upload ends its requests. With `fail_after`, the connection breaks before more bytes than
    that have gone through."""

    streams = True

    def __init__(self, hold: threading.Event | None, fail_after: int | None) -> None:
        self.received = bytearray()
        self.aborted = False
        self.committed = False
        self._hold = hold
        self._fail_after = fail_after

    def write(self, chunk: bytes) -> None:
        if self._hold is not None:
            self._hold.wait()
        if self._fail_after is not None and len(self.received) + len(chunk) > self._fail_after:
            raise DestinationError("destination 'memory': the connection was reset")
        self.received += chunk

    def commit(self, spooled: SpooledSnapshot, manifest: Manifest) -> Manifest:
        self.committed = True
        return manifest

    def abort(self) -> None:
        self.aborted = True
        if self._hold is not None:
            self._hold.set()


class Memory:
    """A streaming store in memory; `begin` may fail or hang to inject the fault under test."""

    def __init__(
        self,
        name: str = "memory",
        *,
        hold: threading.Event | None = None,
        fail_after: int | None = None,
        refuse: bool = False,
        answer: threading.Event | None = None,
    ) -> None:
        self.name = name
        self.upload: MemoryUpload | None = None
        self._hold = hold
        self._fail_after = fail_after
        self._refuse = refuse
        self._answer = answer

    def begin(self, snapshot: str) -> MemoryUpload:
        assert snapshot == NAME
        if self._answer is not None:
            self._answer.wait()
        if self._refuse:
            raise DestinationError(f"destination {self.name!r}: cannot start the upload: denied")
        self.upload = MemoryUpload(self._hold, self._fail_after)
        return self.upload


def local_store(tmp_path: Path, name: str = "local") -> LocalDirectory:
    return LocalDirectory(LocalDestination(type="local", name=name, path=tmp_path / name))


def start(
    targets: list[object],
    part: Path,
    cancel: threading.Event | None = None,
    bounds: dict[str, float | None] | None = None,
) -> Shipment:
    destinations: list[Destination] = targets  # type: ignore[assignment]
    return Shipment(destinations, NAME, part, cancel or threading.Event(), bounds or {})


def stream(shipment: Shipment, part: Path) -> SpooledSnapshot:
    """What the cycle does with the stream from etcd: spool it in small chunks, then seal it."""
    writer = SpoolWriter(part, shipment.write)
    body = DATA[:-SHA256_SIZE]
    for offset in range(0, len(body), 700):
        writer.write(body[offset : offset + 700])
    writer.data_digest()
    writer.seal(DATA[-SHA256_SIZE:])
    shipment.finish()
    # the writer hashes the whole file, trailer included, as it passes
    assert writer.file_sha256 == hashlib.sha256(DATA).hexdigest()
    return SpooledSnapshot(part, verify_snapshot(part), writer.file_sha256)


def spool_part(tmp_path: Path) -> Path:
    spool = tmp_path / "local"
    spool.mkdir(exist_ok=True)
    return part_path(spool / NAME)


def test_every_destination_gets_the_whole_snapshot(tmp_path: Path) -> None:
    local, memory = local_store(tmp_path), Memory()
    part = spool_part(tmp_path)
    shipment = start([local, memory], part)
    spooled = stream(shipment, part)
    stored = shipment.commit(spooled, make_manifest("prod", MOMENT))
    assert set(stored) == {"local", "memory"}
    assert memory.upload is not None and bytes(memory.upload.received) == DATA
    assert (tmp_path / "local" / NAME).read_bytes() == DATA
    assert (
        Manifest.from_json((tmp_path / "local" / manifest_name(NAME)).read_text()).snapshot == NAME
    )
    assert (shipment.uploads, shipment.failures, shipment.busy) == ({}, {}, {})


def test_a_destination_that_cannot_start_drops_out_alone(tmp_path: Path) -> None:
    local, refusing = local_store(tmp_path), Memory(refuse=True)
    part = spool_part(tmp_path)
    shipment = start([refusing, local], part)
    assert list(shipment.uploads) == ["local"]
    stored = shipment.commit(stream(shipment, part), make_manifest("prod", MOMENT))
    assert list(stored) == ["local"]
    assert "cannot start the upload: denied" in shipment.failures["memory"]


def test_a_destination_holding_the_name_already_is_left_to_that_run(tmp_path: Path) -> None:
    local, memory = local_store(tmp_path), Memory()
    part = spool_part(tmp_path)
    (tmp_path / "local" / NAME).write_bytes(b"another run's backup of the same second")
    shipment = start([local, memory], part)
    stored = shipment.commit(stream(shipment, part), make_manifest("prod", MOMENT))
    assert list(stored) == ["memory"]
    assert "stored by another run of the same second" in shipment.busy["local"]
    assert shipment.failures == {}
    assert (tmp_path / "local" / NAME).read_bytes() == b"another run's backup of the same second"


def test_an_upload_that_fails_midway_drops_out_alone(tmp_path: Path) -> None:
    local, healthy = local_store(tmp_path), Memory("healthy")
    failing = Memory(fail_after=len(DATA) // 2)
    part = spool_part(tmp_path)
    shipment = start([local, failing, healthy], part)
    stored = shipment.commit(stream(shipment, part), make_manifest("prod", MOMENT))
    assert set(stored) == {"local", "healthy"}
    assert "connection was reset" in shipment.failures["memory"]
    assert failing.upload is not None and failing.upload.aborted
    assert healthy.upload is not None and bytes(healthy.upload.received) == DATA


def test_a_slow_destination_holds_up_neither_the_stream_nor_the_others(tmp_path: Path) -> None:
    release = threading.Event()
    local, slow = local_store(tmp_path), Memory("slow", hold=release)
    part = spool_part(tmp_path)
    shipment = start([slow, local], part)
    spooled = stream(shipment, part)  # returns although the slow store took no byte yet
    assert slow.upload is not None and not slow.upload.received
    stored: dict[str, Manifest] = {}
    committing = threading.Thread(
        target=lambda: stored.update(shipment.commit(spooled, make_manifest("prod", MOMENT)))
    )
    committing.start()
    manifest = tmp_path / "local" / manifest_name(NAME)
    waited = time.monotonic()
    while not manifest.exists() and time.monotonic() - waited < 10:
        time.sleep(0.01)
    assert manifest.exists(), "the local destination waited for the slow one"
    assert committing.is_alive()
    release.set()
    committing.join(10)
    assert set(stored) == {"local", "slow"}
    assert bytes(slow.upload.received) == DATA


def test_cancelling_stops_a_hung_upload_at_once(tmp_path: Path) -> None:
    hung = Memory("hung", hold=threading.Event())
    cancel = threading.Event()
    part = spool_part(tmp_path)
    shipment = start([hung], part, cancel)
    stream(shipment, part)
    assert hung.upload is not None and not hung.upload.aborted
    cancel.set()
    waited = time.monotonic()
    while not hung.upload.aborted and time.monotonic() - waited < 5:
        time.sleep(0.01)
    assert hung.upload.aborted
    shipment.abort()


def test_a_destination_that_does_not_answer_in_time_is_given_up(tmp_path: Path) -> None:
    never = threading.Event()
    local, silent = local_store(tmp_path), Memory("silent", answer=never)
    part = spool_part(tmp_path)
    try:
        shipment = start([silent, local], part, bounds={"silent": 0.1, "local": None})
        assert "starting the upload got no answer within 0.1 s" in shipment.failures["silent"]
        stored = shipment.commit(stream(shipment, part), make_manifest("prod", MOMENT))
        assert list(stored) == ["local"]
    finally:
        never.set()


def test_aborting_leaves_no_trace(tmp_path: Path) -> None:
    local, memory = local_store(tmp_path), Memory()
    part = spool_part(tmp_path)
    shipment = start([local, memory], part)
    stream(shipment, part)
    shipment.abort()
    assert shipment.uploads == {}
    assert memory.upload is not None and memory.upload.aborted
    assert not (tmp_path / "local" / NAME).exists()
    assert not (tmp_path / "local" / manifest_name(NAME)).exists()


@pytest.mark.parametrize("busy_first", [True, False])
def test_no_upload_at_all_when_every_destination_refuses(tmp_path: Path, busy_first: bool) -> None:
    part = spool_part(tmp_path)
    (tmp_path / "local" / NAME).write_bytes(b"taken")
    targets: list[object] = [local_store(tmp_path), Memory(refuse=True)]
    shipment = start(targets if busy_first else targets[::-1], part)
    assert shipment.uploads == {}
    assert set(shipment.busy) == {"local"} and set(shipment.failures) == {"memory"}
    shipment.abort()
