"""The manifest that describes each stored snapshot, and how snapshots are named."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_FORMAT = 1
SNAPSHOT_PREFIX = "etcd-snapshot-"
SNAPSHOT_SUFFIX = ".db"
MANIFEST_SUFFIX = ".manifest.json"
_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_NAME_RE = re.compile(
    rf"^{re.escape(SNAPSHOT_PREFIX)}(?P<cluster>[A-Za-z0-9_.-]+)-(?P<stamp>\d{{8}}T\d{{6}}Z)"
    rf"{re.escape(SNAPSHOT_SUFFIX)}(?:\.zst|\.gz)?$"
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
    created: datetime = Field(description="when the snapshot stream started (UTC)")
    duration_seconds: float = Field(description="seconds to stream and verify the snapshot")
    size: int = Field(description="bytes of the snapshot file as etcd's restore takes it")
    stored_size: int = Field(description="bytes as stored (differs when compressed)")
    compression: str = "none"
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

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls.model_validate_json(text)
