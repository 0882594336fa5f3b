"""The fan-out of one snapshot stream to the destinations' uploads. The stream is written to the
spool file once; each upload that streams reads it back from there at its own pace, so a slow or
hung destination holds up neither the stream from etcd nor the other destinations, and one that
fails drops out alone."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from .destinations import Destination, SpooledSnapshot, Upload
from .errors import BackupError, DestinationBusy, DestinationError
from .manifest import Manifest
from .stall import within

log = logging.getLogger(__name__)


class _Tide:
    """How far the spool file is written, for the feeds that follow it."""

    def __init__(self) -> None:
        self._written = 0
        self._final = False
        self._stopped = False
        self._changed = threading.Condition()

    def advance(self, size: int) -> None:
        with self._changed:
            self._written += size
            self._changed.notify_all()

    def finish(self) -> None:
        with self._changed:
            self._final = True
            self._changed.notify_all()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def wait_past(self, offset: int) -> tuple[int, bool] | None:
        """Wait until the file holds more than `offset` bytes or is complete; the bytes written
        and whether that is all of them. None once the stream was given up."""
        with self._changed:
            while not self._stopped and not self._final and self._written <= offset:
                self._changed.wait()
            return None if self._stopped else (self._written, self._final)


class _Feed:
    """Hands one upload the spooled bytes, read back from the file at the upload's own pace:
    a slow or hung destination never holds up the stream from etcd nor the other destinations.
    The page cache holds what it has yet to send; its own bounds (stall_timeout, deadline)
    decide when it is given up."""

    _BLOCK = 1024 * 1024

    def __init__(self, name: str, upload: Upload, path: Path, tide: _Tide) -> None:
        self.error: BaseException | None = None
        self._upload = upload
        self._path = path
        self._tide = tide
        self._thread = threading.Thread(target=self._run, name=f"feed-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = -1
        offset = 0
        try:
            while (tide := self._tide.wait_past(offset)) is not None:
                end, final = tide
                if fd < 0:
                    fd = os.open(self._path, os.O_RDONLY | os.O_NOFOLLOW)
                while offset < end:
                    block = os.pread(fd, min(self._BLOCK, end - offset), offset)
                    if not block:
                        raise DestinationError(f"spool file {self._path} ended early")
                    self._upload.write(block)
                    offset += len(block)
                if final:
                    return
        except BaseException as exc:  # handed to the cycle at commit
            self.error = exc
        finally:
            if fd >= 0:
                os.close(fd)

    def wait(self) -> None:
        """Until every byte was handed on, or the upload failed (then raise why)."""
        self._thread.join()
        if self.error is not None:
            raise self.error


class Shipment:
    """The uploads of one streaming attempt; a destination that fails drops out alone."""

    def __init__(
        self,
        targets: Sequence[Destination],
        snapshot: str,
        part: Path,
        cancel: threading.Event,
        bounds: dict[str, float | None],
    ) -> None:
        self.uploads: dict[str, Upload] = {}
        self.failures: dict[str, str] = {}
        self.busy: dict[str, str] = {}
        self._tide = _Tide()
        self._feeds: dict[str, _Feed] = {}
        for target in targets:
            try:
                upload = within(
                    bounds.get(target.name),
                    target.name,
                    "starting the upload",
                    partial(target.begin, snapshot),
                )
            except DestinationBusy as exc:
                log.warning("%s", exc)
                self.busy[target.name] = str(exc)
                continue
            except BackupError as exc:
                self._failed(target.name, exc)
                continue
            self.uploads[target.name] = upload
            if upload.streams:
                self._feeds[target.name] = _Feed(target.name, upload, part, self._tide)
        self._over = threading.Event()
        if self._feeds:
            threading.Thread(
                target=self._watch, args=(cancel,), name="shipment-cancel", daemon=True
            ).start()

    def _watch(self, cancel: threading.Event) -> None:
        """On cancel, stop the uploads that talk to a network at once, even mid-request: a
        hung store must not hold up a shutdown."""
        while not self._over.wait(0.2):
            if cancel.is_set():
                self._tide.stop()
                for name in self._feeds:
                    upload = self.uploads.get(name)
                    if upload is not None:
                        upload.abort()
                return

    def _failed(self, name: str, exc: BaseException) -> None:
        log.error("destination %s failed: %s", name, exc)
        self.failures[name] = str(exc)

    def write(self, chunk: bytes) -> None:
        """The spool writer's sink: `chunk` is in the file now. Never blocks."""
        self._tide.advance(len(chunk))

    def finish(self) -> None:
        self._tide.finish()

    def _drop(self, name: str) -> None:
        upload = self.uploads.pop(name)
        try:
            upload.abort()
        except BackupError as exc:
            log.warning("destination %s: cleaning up the failed upload: %s", name, exc)

    def abort(self) -> None:
        self._over.set()
        self._tide.stop()
        for name in list(self.uploads):
            self._drop(name)

    def commit(self, spooled: SpooledSnapshot, manifest: Manifest) -> dict[str, Manifest]:
        stored: dict[str, Manifest] = {}
        # the destinations already holding every byte first: a slow one delays no other
        for name in sorted(self.uploads, key=lambda n: n in self._feeds):
            try:
                if name in self._feeds:
                    self._feeds[name].wait()
                stored[name] = self.uploads[name].commit(spooled, manifest)
            except DestinationBusy as exc:
                log.warning("%s", exc)
                self.busy[name] = str(exc)
            except BackupError as exc:
                self._failed(name, exc)
                self._drop(name)
                continue
            del self.uploads[name]
        self._over.set()
        return stored
