"""One snapshot's multipart upload to an S3 bucket, fed while the snapshot streams from etcd
through the destination's stages (compression, encryption: only what they make leaves the host);
parts of part_size go up in parallel (at most max_concurrency at once), each guarded by a CRC-32C;
the upload is given up when no part finishes for stall_timeout or it outlasts its deadline, and
completed only after verification, never replacing another run's object."""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import crc32c
from botocore.exceptions import BotoCoreError, ClientError

from ..clock import Clock
from ..errors import DestinationBusy, DestinationError
from ..manifest import Manifest, parse_snapshot_name
from ..stages import Pipeline
from .base import SpooledSnapshot

if TYPE_CHECKING:
    from .s3 import S3Bucket

log = logging.getLogger(__name__)

MAX_PARTS = 10_000
# how often a wait for a part looks at the clock (stall_timeout, deadline) and at abort
_POLL_SECONDS = 0.2


def describe(exc: BaseException) -> str:
    """One line: botocore's messages (a bad bucket name's, for one) span several."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        text = f"{error.get('Code', 'Error')}: {error.get('Message', str(exc))}"
    else:
        text = str(exc)
    return " ".join(text.split())


class _Parts:
    """Where the upload's pipeline ends: its part buffer."""

    def __init__(self, take: Callable[[bytes], None]) -> None:
        self.write = take


class S3Upload:
    """A multipart upload fed while the snapshot streams; parts go up in parallel."""

    streams = True

    def __init__(self, destination: S3Bucket, stored_name: str) -> None:
        self._destination = destination
        self._config = destination.config
        self._clock: Clock = destination.clock
        self._stored_name = stored_name
        self._key = destination.key(stored_name)
        # stored bytes (compressed, encrypted) not yet sent, joined into a part once there are
        # part_size of them
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._parts: list[Future[dict[str, Any]]] = []
        # bounds memory to about part_size x (max_concurrency + 1)
        self._slots = threading.BoundedSemaphore(self._config.max_concurrency)
        # parts in flight, and when one last finished (or the first of a new batch was sent)
        self._in_flight = 0
        self._progress = self._clock.monotonic()
        self._deadline = self._progress + self._config.deadline
        self._abandoned = False
        self._lock = threading.Lock()
        self._stored_size = 0
        self._upload_id: str | None = None
        self._run = secrets.token_hex(6)
        arguments: dict[str, Any] = {
            "Bucket": destination.bucket,
            "Key": self._key,
            "ChecksumAlgorithm": "CRC32C",
            "ContentType": "application/octet-stream",
            # which run started the upload: runs of the same second share the key, never an id;
            # and the stored format's label (never a key name: metadata is not encrypted)
            "Metadata": {
                "tool": "etcd-backupd",
                "run": self._run,
                "format": destination.format.name,
            },
        }
        parsed = parse_snapshot_name(stored_name)
        assert parsed is not None
        self._created = parsed[1]
        arguments.update(self._object_arguments())
        try:
            response = destination.client.create_multipart_upload(**arguments)
        except (ClientError, BotoCoreError) as exc:
            raise destination.error(f"start the upload of {stored_name}", exc) from exc
        self._upload_id = response["UploadId"]
        self._pipeline = Pipeline(destination.stages, _Parts(self._take))

    def write(self, chunk: bytes) -> None:
        self._pipeline.write(chunk)

    def _take(self, data: bytes) -> None:
        """The pipeline's sink: stored bytes, cut into parts of exactly part_size."""
        self._pending.append(data)
        self._pending_size += len(data)
        size = self._config.part_size
        if self._pending_size >= size:
            # parts of exactly part_size, whatever the size of the blocks handed in
            joined = b"".join(self._pending)
            whole = len(joined) - len(joined) % size
            for start in range(0, whole, size):
                self._send(joined[start : start + size])
            self._pending = [joined[whole:]] if whole < len(joined) else []
            self._pending_size = len(joined) - whole

    def _send_pending(self) -> None:
        data = b"".join(self._pending)
        self._pending = []
        self._pending_size = 0
        self._send(data)

    def _send(self, data: bytes) -> None:
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise DestinationError(
                f"destination {self._destination.name!r}: the snapshot needs more than "
                f"{MAX_PARTS} parts; raise part_size"
            )
        self._raise_failed_part()
        while not self._slots.acquire(timeout=_POLL_SECONDS):
            self._check_time()
        self._stored_size += len(data)
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            if not self._in_flight:
                self._progress = self._clock.monotonic()
            self._in_flight += 1
        self._parts.append(future)
        # daemon threads: a request that hangs neither holds up an upload given up nor the
        # process's exit; its wait is bounded by read_timeout
        threading.Thread(
            target=self._upload_part,
            args=(number, data, future),
            name=f"s3-{self._destination.name}-part{number}",
            daemon=True,
        ).start()

    def _check_time(self) -> None:
        """Give the upload up when it stalls or runs out of time, or was aborted meanwhile."""
        destination = self._destination
        where = f"destination {destination.name!r} (s3://{destination.bucket}/{destination.prefix})"
        if self._abandoned:
            raise DestinationError(f"{where}: the upload was aborted")
        now = self._clock.monotonic()
        if now - self._progress > self._config.stall_timeout:
            raise DestinationError(
                f"{where}: no part of the upload finished for {self._config.stall_timeout:g} s; "
                "giving this destination up for this cycle (raise stall_timeout if the store "
                "is just slow)"
            )
        if now > self._deadline:
            raise DestinationError(
                f"{where}: the upload took longer than deadline = {self._config.deadline:g} s; "
                "giving this destination up for this cycle"
            )

    def _upload_part(self, number: int, data: bytes, future: Future[dict[str, Any]]) -> None:
        try:
            future.set_result(self._put_part(number, data))
        except BaseException as exc:  # handed to the waiting side
            future.set_exception(exc)
        finally:
            with self._lock:
                self._in_flight -= 1
            self._slots.release()

    def _put_part(self, number: int, data: bytes) -> dict[str, Any]:
        if self._abandoned:
            raise DestinationError("the upload was aborted")
        # CRC-32C guards each part in transit at a twentieth of SHA-256's cost; the
        # snapshot's own SHA-256 is checked once, as it streams in
        checksum = base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()
        response = self._destination.client.upload_part(
            Bucket=self._destination.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
            ChecksumAlgorithm="CRC32C",
            ChecksumCRC32C=checksum,
        )
        with self._lock:
            self._progress = self._clock.monotonic()
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumCRC32C": checksum}

    def _raise_failed_part(self) -> None:
        for part in self._parts:
            if part.done() and part.exception() is not None:
                exc = part.exception()
                assert exc is not None
                raise self._destination.error(f"upload {self._stored_name}", exc) from exc

    def commit(self, spooled: SpooledSnapshot, manifest: Manifest) -> Manifest:
        destination = self._destination
        try:
            self._pipeline.close()
            if self._pending or not self._parts:
                self._send_pending()
            parts = [self._wait(future) for future in self._parts]
        except (ClientError, BotoCoreError) as exc:
            self.abort()
            raise destination.error(f"upload {self._stored_name}", exc) from exc
        except DestinationError:
            self.abort()
            raise
        stored = manifest.model_copy(
            update={
                "snapshot": self._stored_name,
                "stored_size": self._stored_size,
                "compression": destination.format.compression,
                "stored_format": destination.format.name,
                "recipients": tuple(destination.recipients),
                "snapshot_sha256": spooled.sha256,
                "stored_sha256": self._pipeline.stored_sha256,
            }
        )
        complete: dict[str, Any] = {
            "Bucket": destination.bucket,
            "Key": self._key,
            "UploadId": self._upload_id,
            "MultipartUpload": {"Parts": parts},
        }
        try:
            self._create_new(destination.client.complete_multipart_upload, complete)
        except DestinationBusy:
            self.abort()
            raise
        except (ClientError, BotoCoreError) as exc:
            self.abort()
            raise destination.error(f"complete the upload of {self._stored_name}", exc) from exc
        self._upload_id = None
        try:
            self._describe_object(stored)
            self._create_new(destination.client.put_object, self._manifest_arguments(stored))
        except (ClientError, BotoCoreError, DestinationBusy) as exc:
            # without its manifest the object is not a backup: remove it (unless it is locked,
            # in which case housekeeping reports it as an orphan later)
            self._remove_completed()
            raise destination.error(f"write the manifest of {self._stored_name}", exc) from exc
        log.info(
            "destination %s: stored s3://%s/%s (%d bytes)",
            destination.name,
            destination.bucket,
            self._key,
            self._stored_size,
        )
        return stored

    def _create_new(self, call: Any, arguments: dict[str, Any]) -> None:
        """Create an object that must not exist yet: two runs of the same second name their
        snapshots alike, and the second never replaces the first one's backup."""
        try:
            call(**arguments, IfNoneMatch="*")
            return
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise self._taken(arguments["Key"]) from exc
            if code not in ("NotImplemented", "InvalidArgument"):
                raise
        # a store without conditional writes: look first, which leaves a narrower window
        try:
            self._destination.client.head_object(
                Bucket=self._destination.bucket, Key=arguments["Key"]
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        else:
            raise self._taken(arguments["Key"])
        call(**arguments)

    def _taken(self, key: str) -> DestinationBusy:
        return DestinationBusy(
            f"destination {self._destination.name!r}: s3://{self._destination.bucket}/{key} "
            "was stored by another run meanwhile; not overwriting it"
        )

    def _object_arguments(self) -> dict[str, Any]:
        """Storage class, encryption and Object Lock, the same for snapshot and manifest."""
        config = self._config
        arguments: dict[str, Any] = {}
        if config.storage_class:
            arguments["StorageClass"] = config.storage_class
        if config.sse:
            arguments["ServerSideEncryption"] = config.sse
        if config.sse_kms_key_id:
            arguments["SSEKMSKeyId"] = config.sse_kms_key_id
        if config.object_lock_days:
            arguments["ObjectLockMode"] = config.object_lock_mode
            arguments["ObjectLockRetainUntilDate"] = self._created + timedelta(
                days=config.object_lock_days
            )
        return arguments

    def _describe_object(self, stored: Manifest) -> None:
        """Tag the object with what its manifest says: the figures survive a lost manifest."""
        destination = self._destination
        tags = {
            "sha256": stored.sha256,
            "revision": str(stored.revision),
            "hash": str(stored.hash),
            "total-keys": str(stored.total_keys),
            "cluster-id": stored.cluster_id,
            "created": stored.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        destination.client.put_object_tagging(
            Bucket=destination.bucket,
            Key=self._key,
            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
        )
        lock = self._object_arguments()
        if "ObjectLockMode" in lock:
            # set at creation already; stated again because some S3-compatible stores drop
            # lock settings given to a multipart upload
            destination.client.put_object_retention(
                Bucket=destination.bucket,
                Key=self._key,
                Retention={
                    "Mode": lock["ObjectLockMode"],
                    "RetainUntilDate": lock["ObjectLockRetainUntilDate"],
                },
            )

    def _manifest_arguments(self, stored: Manifest) -> dict[str, Any]:
        body = stored.to_json().encode()
        arguments: dict[str, Any] = {
            "Bucket": self._destination.bucket,
            "Key": self._destination.manifest_key(self._stored_name),
            "Body": body,
            "ContentType": "application/json",
            "ContentMD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
            **self._object_arguments(),
        }
        return arguments

    def _remove_completed(self) -> None:
        """Delete the object this upload completed, unless another run's replaced it."""
        client = self._destination.client
        try:
            found = client.head_object(Bucket=self._destination.bucket, Key=self._key)
            if found.get("Metadata", {}).get("run") != self._run:
                log.warning(
                    "destination %s: %s is another run's now; leaving it",
                    self._destination.name,
                    self._key,
                )
                return
            client.delete_object(Bucket=self._destination.bucket, Key=self._key)
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "destination %s: could not remove %s after the failure: %s",
                self._destination.name,
                self._key,
                describe(exc),
            )

    def _wait(self, part: Future[dict[str, Any]]) -> dict[str, Any]:
        while True:
            try:
                return part.result(timeout=_POLL_SECONDS)
            except FutureTimeout:
                self._check_time()

    def abort(self) -> None:
        # parts still in flight are not waited for: their requests end with read_timeout, and
        # the abort below discards whatever they upload
        self._abandoned = True
        self._pipeline.abort()
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            self._destination.client.abort_multipart_upload(
                Bucket=self._destination.bucket, Key=self._key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "destination %s: could not abort the upload of %s (housekeeping retries after "
                "a day): %s",
                self._destination.name,
                self._key,
                describe(exc),
            )
