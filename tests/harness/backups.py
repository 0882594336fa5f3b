"""Backups as another host, another cluster or an intruder would leave them in a destination:
a snapshot file or object, with or without a manifest beside it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from etcd_backupd.destinations.s3 import MANIFEST_FOLDER
from etcd_backupd.manifest import Manifest, MemberInfo, manifest_name, snapshot_name

CLUSTER_IDS = {"prod": "00000000000000ab", "other": "00000000000000cd"}


def make_manifest(cluster: str, created: datetime, **fields: Any) -> Manifest:
    values: dict[str, Any] = {
        "snapshot": snapshot_name(cluster, created),
        "created": created,
        "duration_seconds": 1.0,
        "size": 8,
        "stored_size": 8,
        "sha256": "0" * 64,
        "revision": 7,
        "total_keys": 42,
        "live_keys": 30,
        "total_size": 4096,
        "hash": 123,
        "etcd_version": "3.5.1",
        "cluster_id": CLUSTER_IDS.get(cluster, "00000000000000ef"),
        "cluster_name": cluster,
        "member": MemberInfo(id="1", name="m1", endpoint="http://127.0.0.1:2379", is_leader=True),
        "tool_version": "0.1.0",
    }
    values.update(fields)
    return Manifest.model_construct(**values)


def plant_local(directory: Path, cluster: str, created: datetime, *, manifest: bool = True) -> str:
    """A snapshot (and its manifest) in a local destination; returns the snapshot name."""
    directory.mkdir(parents=True, exist_ok=True)
    name = snapshot_name(cluster, created)
    (directory / name).write_bytes(b"snapshot")
    if manifest:
        (directory / manifest_name(name)).write_text(make_manifest(cluster, created).to_json())
    return name


def plant_s3(
    client: Any, bucket: str, prefix: str, cluster: str, created: datetime, *, manifest: bool = True
) -> str:
    name = snapshot_name(cluster, created)
    client.put_object(Bucket=bucket, Key=prefix + name, Body=b"snapshot")
    if manifest:
        client.put_object(
            Bucket=bucket,
            Key=prefix + MANIFEST_FOLDER + manifest_name(name),
            Body=make_manifest(cluster, created).to_json().encode(),
        )
    return name
