"""The manifest that describes each stored snapshot, and how snapshots are named."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .formats import SNAPSHOT_SUFFIX, STORED_SUFFIX_PATTERN

MANIFEST_FORMAT = 1
SNAPSHOT_PREFIX = "etcd-snapshot-"
MANIFEST_SUFFIX = ".manifest.json"
# ours are about 1 KB; anything near this is not a manifest and is not read into memory
MANIFEST_MAX_BYTES = 1024 * 1024
_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_NAME_RE = re.compile(
    rf"^{re.escape(SNAPSHOT_PREFIX)}(?P<cluster>[A-Za-z0-9_.-]+)-(?P<stamp>\d{{8}}T\d{{6}}Z)"
    rf"{re.escape(SNAPSHOT_SUFFIX)}{STORED_SUFFIX_PATTERN}$"
)


def snapshot_name(cluster: str, created: datetime) -> str:
    """A name that sorts by time within one cluster: etcd-snapshot-<cluster>-<UTC stamp>.db."""
    stamp = created.astimezone(UTC).strftime(_TIMESTAMP_FORMAT)
    return f"{SNAPSHOT_PREFIX}{cluster}-{stamp}{SNAPSHOT_SUFFIX}"


def parse_snapshot_name(name: str) -> tuple[str, datetime] | None:
    """The cluster and creation time a snapshot name carries, or None for a name not ours."""
    match = _NAME_RE.match(name)
    if match is None:
        return None
    created = datetime.strptime(match["stamp"], _TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    return match["cluster"], created


def manifest_name(snapshot: str) -> str:
    return snapshot + MANIFEST_SUFFIX


def snapshot_of_manifest(name: str) -> str | None:
    """The snapshot a manifest name belongs to, or None when the name is not a manifest's."""
    if not name.endswith(MANIFEST_SUFFIX):
        return None
    snapshot = name.removesuffix(MANIFEST_SUFFIX)
    return snapshot if parse_snapshot_name(snapshot) else None


class MemberInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(description="member ID, hex")
    name: str
    endpoint: str = Field(description="the client URL the snapshot was streamed from")
    is_leader: bool


class Manifest(BaseModel):
    """Written last, beside the snapshot: its presence says the snapshot is complete and sound."""

    model_config = ConfigDict(frozen=True)

    format: int = MANIFEST_FORMAT
    snapshot: str = Field(description="file or object name of the snapshot")
    created: AwareDatetime = Field(description="when the snapshot stream started (UTC)")
    duration_seconds: float = Field(description="seconds to stream and verify the snapshot")
    size: int = Field(description="bytes of the snapshot file as etcd's restore takes it")
    stored_size: int = Field(description="bytes as stored (differs when compressed)")
    compression: str = "none"
    stored_format: str = Field(
        "none",
        description="layers between the snapshot and the stored bytes, as formats names them: "
        '"none", "zstd", "gzip+age"; a manifest from before encryption holds its compression',
    )
    recipients: tuple[str, ...] = Field(
        (), description="public keys (never identities) the stored object is encrypted to"
    )
    snapshot_sha256: str | None = Field(
        None,
        description="SHA-256 of the snapshot file as etcd wrote it, trailer included; none in a "
        "manifest from before encryption",
    )
    stored_sha256: str | None = Field(
        None,
        description="SHA-256 of the stored file or object (compressed, encrypted); none in a "
        "manifest from before encryption",
    )
    sha256: str = Field(description="SHA-256 of the database bytes, the snapshot's trailer")
    revision: int
    total_keys: int = Field(
        description="TOTAL KEYS as the etcdutl of the snapshot's line prints it: entries of every "
        "bucket before 3.6 (no storage version), live keys from 3.6"
    )
    live_keys: int = Field(description="keys a restored cluster would hold")
    storage_version: str | None = Field(
        default=None,
        description="the snapshot's storage version (etcd 3.6+, etcdutl's VERSION); none before",
    )
    total_size: int = Field(description="database size (pages), as etcdutl snapshot status")
    hash: int = Field(description="CRC-32C of the buckets, as etcdutl snapshot status")
    etcd_version: str
    cluster_id: str = Field(description="cluster ID, hex")
    cluster_name: str
    member: MemberInfo
    tool_version: str

    @model_validator(mode="before")
    @classmethod
    def _format_of_an_older_manifest(cls, data: Any) -> Any:
        """Before encryption, compression was the only layer a snapshot could be stored in."""
        if isinstance(data, dict) and "stored_format" not in data and "compression" in data:
            return {**data, "stored_format": data["compression"]}
        return data

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls.model_validate_json(text)


class ManifestRejected(ValueError):
    """A manifest that is not one of ours, naming what is wrong with it."""

    def __init__(self, field: str | None, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"field {field!r}: {reason}" if field else reason)


def read_manifest(data: bytes, snapshot: str) -> Manifest:
    """The manifest stored as `manifest_name(snapshot)`, checked against that name.

    Everything a destination holds may have been written by someone else: the `snapshot` field
    decides which file a restore fetches, so it must be the name the manifest is stored under,
    and its cluster and time must be the ones that name carries.
    """
    if len(data) > MANIFEST_MAX_BYTES:
        raise ManifestRejected(None, f"larger than {MANIFEST_MAX_BYTES} bytes")
    try:
        manifest = Manifest.from_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise ManifestRejected(field, first["msg"]) from None
    except ValueError as exc:
        raise ManifestRejected(None, str(exc).splitlines()[0]) from None
    parsed = parse_snapshot_name(manifest.snapshot)
    if manifest.snapshot != snapshot or parsed is None:
        raise ManifestRejected(
            "snapshot", f"{manifest.snapshot!r} is not {snapshot!r}, the name it is stored under"
        )
    cluster, stamp = parsed
    if manifest.cluster_name != cluster:
        raise ManifestRejected(
            "cluster_name", f"{manifest.cluster_name!r} is not {cluster!r}, as the name says"
        )
    if not stamp <= manifest.created < stamp + timedelta(seconds=1):
        raise ManifestRejected(
            "created", f"{manifest.created.isoformat()} is not the time the name carries"
        )
    return manifest


@dataclass(frozen=True)
class Cluster:
    """Whose backups are whose in a destination many clusters may share: the cluster part of
    the snapshot names, and etcd's cluster ID (hex) when it is known."""

    name: str
    id: str | None = None

    def named(self, snapshot: str) -> bool:
        parsed = parse_snapshot_name(snapshot)
        return parsed is not None and parsed[0] == self.name

    def owns(self, manifest: Manifest) -> bool:
        return self.named(manifest.snapshot) and self.id in (None, manifest.cluster_id)
