"""An S3 bucket (AWS or any S3-compatible store), through boto3.

The snapshot is uploaded as a multipart upload while it still streams from etcd; the upload is
completed only after verification passed, so an unverified snapshot never becomes an object.
Every object this destination writes, lists or deletes lives under the configured prefix:
snapshots at <prefix><name>, their manifests at <prefix>manifests/<name>.manifest.json.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import crc32c
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from ..compression import SUFFIXES, compressor
from ..config_destinations import S3Destination as S3Config
from ..errors import DestinationBusy, DestinationError
from ..fsutil import create_new
from ..manifest import (
    MANIFEST_MAX_BYTES,
    Manifest,
    ManifestRejected,
    manifest_name,
    parse_snapshot_name,
    read_manifest,
    snapshot_of_manifest,
)
from .base import SpooledSnapshot, StoredItem, pair

log = logging.getLogger(__name__)

MAX_PARTS = 10_000
DELETE_BATCH = 1_000
# Manifests live in a folder of their own so that pruning lists only snapshots: one object per
# backup, 1,000 per ListObjectsV2 call.
MANIFEST_FOLDER = "manifests/"
# An upload this old is no live stream of ours: a killed run left it.
STALE_UPLOAD_AGE = timedelta(days=1)
# how often a wait for a part looks at the clock (stall_timeout, deadline) and at abort
_POLL_SECONDS = 0.2


def _describe(exc: BaseException) -> str:
    """One line: botocore's messages (a bad bucket name's, for one) span several."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        text = f"{error.get('Code', 'Error')}: {error.get('Message', str(exc))}"
    else:
        text = str(exc)
    return " ".join(text.split())


class S3Bucket:
    def __init__(self, config: S3Config) -> None:
        self.name = config.name
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix
        self._client: Any = None

    def error(self, action: str, exc: BaseException) -> DestinationError:
        where = f"s3://{self.bucket}/{self.prefix}"
        return DestinationError(
            f"destination {self.name!r} ({where}): cannot {action}: {_describe(exc)}"
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            config = self.config
            boto_config = BotoConfig(
                retries={"mode": "standard", "total_max_attempts": config.max_attempts},
                s3={"addressing_style": config.addressing_style},
                max_pool_connections=config.max_concurrency + 2,
                connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout,
                # newer botocore adds CRC checksums to every request by default, which many
                # S3-compatible stores reject; the parts carry explicit CRC-32C checksums instead
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            session = boto3.session.Session()
            self._client = session.client(
                "s3",
                region_name=config.region,
                endpoint_url=config.endpoint_url,
                verify=str(config.ca_bundle) if config.ca_bundle else None,
                aws_access_key_id=config.access_key_id,
                aws_secret_access_key=config.secret_access_key(),
                config=boto_config,
            )
        return self._client

    def key(self, name: str) -> str:
        return self.prefix + name

    def spool_dir(self) -> Path | None:
        return None

    def identity(self) -> str:
        return f"s3 {self.config.endpoint_url or 'aws'} {self.bucket}/{self.prefix}"

    def begin(self, snapshot: str) -> _S3Upload:
        return _S3Upload(self, snapshot + SUFFIXES[self.config.compression])

    def manifest_key(self, snapshot: str) -> str:
        return self.prefix + MANIFEST_FOLDER + manifest_name(snapshot)

    def _names(self, folder: str) -> list[str]:
        """Names of the objects directly in prefix + folder (one ListObjectsV2 per 1,000)."""
        base = self.prefix + folder
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            )
            return [obj["Key"][len(base) :] for page in pages for obj in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as exc:
            raise self.error("list objects", exc) from exc

    def snapshots(self) -> list[StoredItem]:
        items = []
        for name in self._names(""):
            parsed = parse_snapshot_name(name)
            if parsed is not None:
                items.append(StoredItem(name, parsed[1], has_manifest=None, has_snapshot=True))
        return sorted(items, key=lambda item: (item.created, item.snapshot))

    def inventory(self) -> list[StoredItem]:
        snapshots = {item.snapshot for item in self.snapshots()}
        manifests = {
            owner
            for name in self._names(MANIFEST_FOLDER)
            if (owner := snapshot_of_manifest(name)) is not None
        }
        return pair(snapshots, manifests)

    def manifests(self, inventory: Sequence[StoredItem] | None = None) -> list[Manifest]:
        listed = self.inventory() if inventory is None else inventory
        paired = [i.snapshot for i in listed if i.has_manifest and i.has_snapshot]
        # one GET per manifest: in parallel, as the parts of an upload are
        with ThreadPoolExecutor(
            max_workers=self.config.max_concurrency, thread_name_prefix=f"s3-{self.name}"
        ) as pool:
            read = list(pool.map(self._read_manifest, paired))
        manifests: list[Manifest] = []
        for snapshot, outcome in zip(paired, read, strict=True):
            if isinstance(outcome, Manifest):
                manifests.append(outcome)
            else:
                log.warning(
                    "destination %s: ignoring manifest %s: %s",
                    self.name,
                    self.manifest_key(snapshot),
                    outcome,
                )
        manifests.sort(key=lambda m: (m.created, m.snapshot))
        return manifests

    def _read_manifest(self, snapshot: str) -> Manifest | ManifestRejected:
        """The manifest, or why it is not one; never reads more than a manifest may hold."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.manifest_key(snapshot))
            body = response["Body"]
            try:
                if response.get("ContentLength", 0) > MANIFEST_MAX_BYTES:
                    return ManifestRejected(None, f"larger than {MANIFEST_MAX_BYTES} bytes")
                data: bytes = body.read(MANIFEST_MAX_BYTES + 1)
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise self.error(f"read the manifest of {snapshot}", exc) from exc
        try:
            return read_manifest(data, snapshot)
        except ManifestRejected as exc:
            return exc

    def fetch(self, snapshot: str, target: Path) -> Path:
        if parse_snapshot_name(snapshot) is None:
            raise DestinationError(
                f"destination {self.name!r}: {snapshot!r} is not a snapshot name"
            )
        try:
            fd = create_new(target)
        except OSError as exc:
            raise DestinationError(
                f"destination {self.name!r}: cannot create {target}: {exc.strerror}"
            ) from exc
        try:
            with os.fdopen(fd, "wb") as out:
                self.client.download_fileobj(self.bucket, self.key(snapshot), out)
        except (ClientError, BotoCoreError) as exc:
            target.unlink(missing_ok=True)
            raise self.error(f"download {snapshot}", exc) from exc
        return target

    def delete(self, snapshots: list[str]) -> None:
        # manifests first, in their own batches: a snapshot is never left looking like a backup
        # while its manifest outlives it
        keys = [self.manifest_key(s) for s in snapshots] + [self.key(s) for s in snapshots]
        self._delete_objects([{"Key": k} for k in keys])
        if self.config.delete_versions and keys:
            self._delete_objects(self._versions_of(keys))

    def _versions_of(self, keys: list[str]) -> list[dict[str, str]]:
        """Every version and delete marker of exactly these keys."""
        found: list[dict[str, str]] = []
        try:
            for key in keys:
                pages = self.client.get_paginator("list_object_versions").paginate(
                    Bucket=self.bucket, Prefix=key
                )
                for page in pages:
                    for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                        if entry["Key"] == key:
                            found.append({"Key": key, "VersionId": entry["VersionId"]})
        except (ClientError, BotoCoreError) as exc:
            raise self.error("list the versions of deleted objects", exc) from exc
        return found

    def _delete_objects(self, objects: list[dict[str, str]]) -> None:
        for start in range(0, len(objects), DELETE_BATCH):
            batch = objects[start : start + DELETE_BATCH]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except (ClientError, BotoCoreError) as exc:
                raise self.error("delete objects", exc) from exc
            for failure in response.get("Errors", []):
                log.warning(
                    "destination %s: could not delete %s: %s %s",
                    self.name,
                    failure.get("Key"),
                    failure.get("Code"),
                    failure.get("Message"),
                )

    def versioning(self) -> str | None:
        """The bucket's versioning status ("Enabled", "Suspended"), None when never enabled."""
        try:
            status: str | None = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
        except (ClientError, BotoCoreError) as exc:
            raise self.error("read the bucket's versioning", exc) from exc
        return status

    def deletion_note(self) -> str | None:
        status = self.versioning()
        if status is None:
            return None
        if self.config.delete_versions:
            return (
                f"bucket versioning is {status}: every version of a deleted snapshot is deleted "
                "too (delete_versions)"
            )
        return (
            f"bucket versioning is {status}: deleted snapshots stay readable as noncurrent "
            "versions until a lifecycle rule (NoncurrentVersionExpiration) removes them; or "
            "set delete_versions = true"
        )

    def in_progress(self, since: datetime) -> bool:
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            return any(
                self._ours(upload) and self._upload_started(upload) >= since
                for page in pages
                for upload in page.get("Uploads", [])
            )
        except (ClientError, BotoCoreError) as exc:
            raise self.error("list uploads in progress", exc) from exc

    def _ours(self, upload: dict[str, Any]) -> bool:
        """Whether this tool started an incomplete upload: its key is a snapshot name directly
        under the prefix. Other applications' uploads, even under the prefix, are not ours."""
        key: str = upload["Key"]
        return (
            key.startswith(self.prefix) and parse_snapshot_name(key[len(self.prefix) :]) is not None
        )

    def _upload_started(self, upload: dict[str, Any]) -> datetime:
        """When an incomplete upload began. Our keys carry their start time, which wins over
        `Initiated`: some S3-compatible stores report a fixed or missing date there."""
        started: datetime = upload["Initiated"]
        parsed = parse_snapshot_name(upload["Key"][len(self.prefix) :])
        return max(started, parsed[1]) if parsed else started

    def housekeeping(self, now: datetime) -> list[str]:
        aborted: list[str] = []
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if (
                        not self._ours(upload)
                        or now - self._upload_started(upload) < STALE_UPLOAD_AGE
                    ):
                        continue
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted.append(f"incomplete upload of {upload['Key']}")
        except (ClientError, BotoCoreError) as exc:
            raise self.error("clean up incomplete uploads", exc) from exc
        return aborted


class _S3Upload:
    """A multipart upload fed while the snapshot streams; parts go up in parallel."""

    streams = True

    def __init__(self, destination: S3Bucket, stored_name: str) -> None:
        self._destination = destination
        self._config = destination.config
        self._stored_name = stored_name
        self._key = destination.key(stored_name)
        self._compressor = compressor(self._config.compression)
        # compressed bytes not yet sent, joined into a part once there are part_size of them
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._parts: list[Future[dict[str, Any]]] = []
        # bounds memory to about part_size x (max_concurrency + 1)
        self._slots = threading.BoundedSemaphore(self._config.max_concurrency)
        # parts in flight, and when one last finished (or the first of a new batch was sent)
        self._in_flight = 0
        self._progress = time.monotonic()
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
            # which run started the upload: runs of the same second share the key, never an id
            "Metadata": {
                "tool": "etcd-backupd",
                "run": self._run,
                "compression": self._config.compression,
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

    def write(self, chunk: bytes) -> None:
        data = self._compressor.compress(chunk)
        if not data:
            return
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
                self._progress = time.monotonic()
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
        now = time.monotonic()
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
            self._progress = time.monotonic()
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
            tail = self._compressor.flush()
            if tail:
                self._pending.append(tail)
                self._pending_size += len(tail)
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
                "compression": self._config.compression,
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
                _describe(exc),
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
                _describe(exc),
            )
