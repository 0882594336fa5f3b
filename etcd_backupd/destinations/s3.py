"""An S3 bucket (AWS or any S3-compatible store), through boto3.

The snapshot is uploaded as a multipart upload (`s3_upload.py`) while it still streams from etcd;
the upload is completed only after verification passed, so an unverified snapshot never becomes
an object.
Every object this destination writes, lists or deletes lives under the configured prefix:
snapshots at <prefix><name>, their manifests at <prefix>manifests/<name>.manifest.json.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from botocore.loaders import Loader

from ..clock import SYSTEM_CLOCK, Clock
from ..compression import writing
from ..config_destinations import S3Destination as S3Config
from ..errors import DestinationError, SnapshotInvalid
from ..formats import stored_name
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
from .base import StoredItem, check_stored, file_sha256, pair
from .s3_upload import S3Upload, describe

log = logging.getLogger(__name__)

DELETE_BATCH = 1_000
# Manifests live in a folder of their own so that pruning lists only snapshots: one object per
# backup, 1,000 per ListObjectsV2 call.
MANIFEST_FOLDER = "manifests/"
# An upload this old is no live stream of ours: a killed run left it.
STALE_UPLOAD_AGE = timedelta(days=1)
# botocore's service models (S3's API, endpoint rules, every region), read once per process: a
# session of its own per client would parse them anew each cycle, and glibc would keep the
# fragments. Sessions stay per client, so credentials are still read afresh.
_models: list[Loader] = []


def _session() -> boto3.session.Session:
    session = botocore.session.get_session()
    if _models:
        session.register_component("data_loader", _models[0])
    else:
        _models.append(session.get_component("data_loader"))
    return boto3.session.Session(botocore_session=session)


class S3Bucket:
    def __init__(self, config: S3Config, clock: Clock = SYSTEM_CLOCK) -> None:
        self.name = config.name
        self.config = config
        # the uploads' stall_timeout and deadline run on it
        self.clock = clock
        self.bucket = config.bucket
        self.prefix = config.prefix
        self.format = config.stored_format
        self.recipients = config.encryption.public_keys() if config.encryption else []
        self.stages = writing(self.format, config.encryption.parsed() if config.encryption else ())
        self._client: Any = None

    def error(self, action: str, exc: BaseException) -> DestinationError:
        where = f"s3://{self.bucket}/{self.prefix}"
        return DestinationError(
            f"destination {self.name!r} ({where}): cannot {action}: {describe(exc)}"
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
            self._client = _session().client(
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

    def keeps_spool(self) -> bool:
        return False

    def identity(self) -> str:
        return f"s3 {self.config.endpoint_url or 'aws'} {self.bucket}/{self.prefix}"

    def begin(self, snapshot: str) -> S3Upload:
        return S3Upload(self, stored_name(snapshot, self.format))

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

    def fetch(self, snapshot: str, target: Path, *, stored_sha256: str | None = None) -> Path:
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
            # hashed in one read afterwards: ranges land out of order, and hashing them as they
            # arrive would hold the early ones in memory (up to s3transfer's in-memory limit)
            if stored_sha256 is not None:
                check_stored(self.name, snapshot, file_sha256(target), stored_sha256)
        except (ClientError, BotoCoreError) as exc:
            target.unlink(missing_ok=True)
            raise self.error(f"download {snapshot}", exc) from exc
        except SnapshotInvalid:
            target.unlink(missing_ok=True)
            raise
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
