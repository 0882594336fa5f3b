"""One snapshot's multipart upload to an S3 bucket, fed while the snapshot streams from etcd
through the destination's stages (compression, encryption: only what they make leaves the host).
The generic layer (multipart.py) cuts parts, bounds those in flight and gives the upload up on a
stall or at its deadline; here are S3's four primitives for it (each part guarded by a CRC-32C),
and what S3 adds: completing only after verification, never replacing another run's object, then
tags, retention and the manifest."""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import crc32c
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import DestinationBusy, DestinationError
from ..manifest import Manifest, parse_snapshot_name
from ..stages import Pipeline
from .base import SpooledSnapshot
from .multipart import Bounds, MultipartUpload, Receipt

if TYPE_CHECKING:
    from .s3 import S3Bucket

log = logging.getLogger(__name__)

MAX_PARTS = 10_000


def describe(exc: BaseException) -> str:
    """One line: botocore's messages (a bad bucket name's, for one) span several."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        text = f"{error.get('Code', 'Error')}: {error.get('Message', str(exc))}"
    else:
        text = str(exc)
    return " ".join(text.split())


class _S3Parts:
    """The four primitives of an S3 multipart upload (multipart.PartStore)."""

    def __init__(self, upload: S3Upload, arguments: dict[str, Any]) -> None:
        self._upload = upload
        self.destination = upload.destination
        self._arguments = arguments
        self._key: str = arguments["Key"]
        self._upload_id: str | None = None

    def _failed(self, action: str, exc: BaseException) -> DestinationError:
        return self.destination.error(f"{action} {self._upload.stored_name}", exc)

    def start(self) -> None:
        try:
            response = self.destination.client.create_multipart_upload(**self._arguments)
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("start the upload of", exc) from exc
        self._upload_id = response["UploadId"]

    def upload_part(self, number: int, data: bytes) -> Receipt:
        # CRC-32C guards each part in transit at a twentieth of SHA-256's cost; the
        # snapshot's own SHA-256 is checked once, as it streams in
        checksum = base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()
        try:
            response = self.destination.client.upload_part(
                Bucket=self.destination.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
                ChecksumAlgorithm="CRC32C",
                ChecksumCRC32C=checksum,
            )
        except Exception as exc:
            raise self._failed("upload", exc) from exc
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumCRC32C": checksum}

    def complete(self, receipts: list[Receipt]) -> None:
        complete: dict[str, Any] = {
            "Bucket": self.destination.bucket,
            "Key": self._key,
            "UploadId": self._upload_id,
            "MultipartUpload": {"Parts": receipts},
        }
        try:
            self._upload.create_new(self.destination.client.complete_multipart_upload, complete)
        except (ClientError, BotoCoreError) as exc:
            raise self._failed("complete the upload of", exc) from exc
        self._upload_id = None

    def abort(self) -> None:
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            self.destination.client.abort_multipart_upload(
                Bucket=self.destination.bucket, Key=self._key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "destination %s: could not abort the upload of %s (housekeeping retries after "
                "a day): %s",
                self.destination.name,
                self._key,
                describe(exc),
            )


class S3Upload:
    """A multipart upload (multipart.py) fed while the snapshot streams; parts go up in
    parallel."""

    streams = True

    def __init__(self, destination: S3Bucket, stored_name: str) -> None:
        self.destination = destination
        self._config = destination.config
        self.stored_name = stored_name
        self._key = destination.key(stored_name)
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
        config = self._config
        bounds = Bounds(
            part_size=config.part_size,
            max_in_flight=config.max_concurrency,
            max_parts=MAX_PARTS,
            stall_timeout=config.stall_timeout,
            deadline=config.deadline,
        )
        where = f"destination {destination.name!r} (s3://{destination.bucket}/{destination.prefix})"
        self._upload = MultipartUpload(_S3Parts(self, arguments), bounds, destination.clock, where)
        self._pipeline = Pipeline(destination.stages, self._upload)

    def write(self, chunk: bytes) -> None:
        self._pipeline.write(chunk)

    def commit(self, spooled: SpooledSnapshot, manifest: Manifest) -> Manifest:
        destination = self.destination
        try:
            self._pipeline.close()
        except BaseException:
            self.abort()
            raise
        # completes the object, or aborts the upload and raises why
        self._upload.complete()
        stored = manifest.model_copy(
            update={
                "snapshot": self.stored_name,
                "stored_size": self._upload.size,
                "compression": destination.format.compression,
                "stored_format": destination.format.name,
                "recipients": tuple(destination.recipients),
                "snapshot_sha256": spooled.sha256,
                "stored_sha256": self._pipeline.stored_sha256,
            }
        )
        try:
            self._describe_object(stored)
            self.create_new(destination.client.put_object, self._manifest_arguments(stored))
        except (ClientError, BotoCoreError, DestinationBusy) as exc:
            # without its manifest the object is not a backup: remove it (unless it is locked,
            # in which case housekeeping reports it as an orphan later)
            self._remove_completed()
            raise destination.error(f"write the manifest of {self.stored_name}", exc) from exc
        log.info(
            "destination %s: stored s3://%s/%s (%d bytes)",
            destination.name,
            destination.bucket,
            self._key,
            self._upload.size,
        )
        return stored

    def create_new(self, call: Any, arguments: dict[str, Any]) -> None:
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
            self.destination.client.head_object(
                Bucket=self.destination.bucket, Key=arguments["Key"]
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        else:
            raise self._taken(arguments["Key"])
        call(**arguments)

    def _taken(self, key: str) -> DestinationBusy:
        return DestinationBusy(
            f"destination {self.destination.name!r}: s3://{self.destination.bucket}/{key} "
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
        destination = self.destination
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
            "Bucket": self.destination.bucket,
            "Key": self.destination.manifest_key(self.stored_name),
            "Body": body,
            "ContentType": "application/json",
            "ContentMD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
            **self._object_arguments(),
        }
        return arguments

    def _remove_completed(self) -> None:
        """Delete the object this upload completed, unless another run's replaced it."""
        client = self.destination.client
        try:
            found = client.head_object(Bucket=self.destination.bucket, Key=self._key)
            if found.get("Metadata", {}).get("run") != self._run:
                log.warning(
                    "destination %s: %s is another run's now; leaving it",
                    self.destination.name,
                    self._key,
                )
                return
            client.delete_object(Bucket=self.destination.bucket, Key=self._key)
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "destination %s: could not remove %s after the failure: %s",
                self.destination.name,
                self._key,
                describe(exc),
            )

    def abort(self) -> None:
        self._pipeline.abort()
        self._upload.abort()
