"""The S3 destination against moto's standalone server over HTTP, through the real boto3 path."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import crc32c
import pytest

from etcd_backupd import cycle
from etcd_backupd.config import parse_config
from etcd_backupd.config_destinations import S3Destination
from etcd_backupd.cycle import run_cycle
from etcd_backupd.destinations.s3 import S3Bucket
from etcd_backupd.errors import SnapshotInvalid
from etcd_backupd.manifest import Cluster, manifest_name
from etcd_backupd.prune import prune
from etcd_backupd.retention import RetentionPolicy
from tests.harness.backups import plant_s3
from tests.harness.cli import config_data as harness_config
from tests.harness.cli import local_destination, run_cli, s3_destination, start_cli, write_toml
from tests.harness.etcd import EtcdCluster, load_kubernetes_like_keys
from tests.harness.faultproxy import FaultProxy
from tests.harness.polling import wait_until
from tests.harness.s3 import MotoServer, make_bucket, s3_environment, start_moto
from tests.harness.tls import make_tls

BUCKET = "etcd-backups"


def config_data(
    tmp_path: Path, cluster: EtcdCluster, endpoint: str, *, local: bool = True, **s3: Any
) -> dict[str, Any]:
    destinations = [local_destination(tmp_path / "local")] if local else []
    destinations.append(s3_destination(endpoint, BUCKET, part_size=5 * 1024 * 1024, **s3))
    return harness_config(
        tmp_path, cluster, etcd={"cluster_name": "prod"}, destinations=destinations
    )


def keys(client: Any, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def uploads_in_progress(client: Any) -> list[Any]:
    uploads: list[Any] = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    return uploads


def bulk(cluster: EtcdCluster, megabytes: int) -> None:
    client = cluster.client()
    value = os.urandom(1_000_000)
    for i in range(megabytes):
        client.put(f"/registry/secrets/bulk/{i:04d}", value[i:] + value[:i])
    client.close()


def test_once_ships_to_local_and_s3(etcd35: EtcdCluster, s3: MotoServer, tmp_path: Path) -> None:
    load_kubernetes_like_keys(etcd35, count=100)
    bulk(etcd35, 12)  # several multipart parts
    client = s3.client()
    make_bucket(client, BUCKET)
    client.put_object(Bucket=BUCKET, Key="prod/notes.txt", Body=b"not ours")
    data = config_data(tmp_path, etcd35, s3.endpoint_url, sse="AES256", storage_class="STANDARD_IA")
    config = write_toml(tmp_path / "config.toml", data)

    result = run_cli("once", "--config", str(config), env=s3_environment())
    assert result.returncode == 0, result.stderr

    stored = keys(client, "prod/")
    snapshots = [k for k in stored if k.endswith(".db")]
    assert len(snapshots) == 1
    manifest_key = "prod/manifests/" + snapshots[0].removeprefix("prod/") + ".manifest.json"
    assert stored == sorted([snapshots[0], manifest_key, "prod/notes.txt"])
    head = client.head_object(Bucket=BUCKET, Key=snapshots[0], ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["StorageClass"] == "STANDARD_IA"
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    tags = {
        t["Key"]: t["Value"]
        for t in client.get_object_tagging(Bucket=BUCKET, Key=snapshots[0])["TagSet"]
    }
    assert tags["sha256"] == manifest["sha256"]
    assert tags["revision"] == str(manifest["revision"])
    local_copy = next((tmp_path / "local").glob("*.db"))
    body = client.get_object(Bucket=BUCKET, Key=snapshots[0])["Body"].read()
    assert body == local_copy.read_bytes()
    assert manifest["stored_size"] == len(body)
    # each part carried its CRC-32C; the store's composite checksum is the CRC-32C of theirs
    # (etcd streams 32 KiB chunks, so every part but the last is exactly part_size)
    part_size = data["destination"][1]["part_size"]
    part_crcs = b"".join(
        crc32c.crc32c(body[at : at + part_size]).to_bytes(4, "big")
        for at in range(0, len(body), part_size)
    )
    composite = base64.b64encode(crc32c.crc32c(part_crcs).to_bytes(4, "big")).decode()
    assert head["ChecksumCRC32C"] == composite
    assert uploads_in_progress(client) == []

    listed = run_cli("list", "-c", str(config), "-o", "json", env=s3_environment())
    assert listed.returncode == 0, listed.stderr
    assert [m["snapshot"] for m in json.loads(listed.stdout)["s3"]] == [
        snapshots[0].removeprefix("prod/")
    ]


def test_zstd_compression_round_trip(etcd35: EtcdCluster, s3: MotoServer, tmp_path: Path) -> None:
    load_kubernetes_like_keys(etcd35, count=200)
    client = s3.client()
    make_bucket(client, BUCKET)
    data = config_data(tmp_path, etcd35, s3.endpoint_url, compression="zstd")
    data["destination"][0]["compression"] = "gzip"
    result = run_cycle(parse_config(data))
    assert result.ok, result.error
    assert result.manifest is not None
    for stored in result.destinations:
        assert stored.manifest is not None
        assert stored.manifest.size == result.manifest.size
        assert stored.manifest.stored_size < stored.manifest.size
    (object_key,) = [k for k in keys(client) if k.endswith(".db.zst")]
    target = tmp_path / "fetched.db.zst"
    client.download_file(BUCKET, object_key, str(target))
    gz = next((tmp_path / "local").glob("*.db.gz"))
    for path in (target, gz):
        verified = run_cli("verify", str(path), "-o", "json")
        assert verified.returncode == 0, verified.stderr
        assert json.loads(verified.stdout)["sha256"] == result.manifest.sha256


def test_a_fetch_is_checked_against_the_stored_sha256_of_its_manifest(
    etcd35: EtcdCluster, s3: MotoServer, tmp_path: Path
) -> None:
    # past boto3's multipart threshold: the download's ranges arrive concurrently, in any order
    bulk(etcd35, 12)
    client = s3.client()
    make_bucket(client, BUCKET)
    data = config_data(tmp_path, etcd35, s3.endpoint_url, local=False, compression="zstd")
    result = run_cycle(parse_config(data))
    assert result.ok, result.error
    (stored,) = result.destinations
    assert stored.manifest is not None and stored.manifest.stored_sha256 is not None
    settings = parse_config(data).destination[0]
    assert isinstance(settings, S3Destination)
    bucket = S3Bucket(settings)
    name, recorded = stored.manifest.snapshot, stored.manifest.stored_sha256

    fetched = bucket.fetch(name, tmp_path / name, stored_sha256=recorded)
    key = f"prod/{name}"
    assert fetched.read_bytes() == client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    fetched.unlink()
    client.put_object(Bucket=BUCKET, Key=key, Body=b"\x28\xb5\x2f\xfd replaced")
    with pytest.raises(SnapshotInvalid, match="'s3': the stored object does not match"):
        bucket.fetch(name, tmp_path / name, stored_sha256=recorded)
    assert not (tmp_path / name).exists()


def test_failed_verification_leaves_no_object(
    etcd35: EtcdCluster, s3: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bulk(etcd35, 12)
    client = s3.client()
    make_bucket(client, BUCKET)

    def damaged(path: Path, **_: object) -> None:
        raise SnapshotInvalid("injected: the walk found a damaged page")

    monkeypatch.setattr(cycle, "verify_snapshot", damaged)
    result = run_cycle(parse_config(config_data(tmp_path, etcd35, s3.endpoint_url)))

    assert not result.ok
    assert result.failed_stage == "verify"
    # only finished stages have a duration: the failed one is counted as a failure instead
    assert list(result.stage_seconds) == ["snapshot"]
    assert keys(client) == []
    assert uploads_in_progress(client) == []
    assert list((tmp_path / "local").iterdir()) == []


def test_unreachable_s3_does_not_stop_local(etcd35: EtcdCluster, tmp_path: Path) -> None:
    closed = "http://127.0.0.1:9"
    data = config_data(tmp_path, etcd35, closed, max_attempts=2)
    config = write_toml(tmp_path / "config.toml", data)
    result = run_cli("once", "--config", str(config), env=s3_environment())
    assert result.returncode == 5
    assert "destination 's3'" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(list((tmp_path / "local").glob("*.db"))) == 1


def test_slowdown_bursts_are_retried(
    etcd35: EtcdCluster, s3: MotoServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    bulk(etcd35, 12)
    make_bucket(s3.client(), BUCKET)
    fault_proxy.fail_next(3, 503, "SlowDown", operation="UploadPart")
    fault_proxy.fail_next(2, 500, "InternalError", operation="CompleteMultipartUpload")
    result = run_cycle(parse_config(config_data(tmp_path, etcd35, fault_proxy.endpoint_url)))
    assert result.ok, result.error
    assert fault_proxy.counts["UploadPart"] >= 3 + 3
    assert len([k for k in keys(s3.client()) if k.endswith(".db")]) == 1


def test_slowdown_beyond_the_retry_budget_fails_cleanly(
    etcd35: EtcdCluster, s3: MotoServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    bulk(etcd35, 12)
    client = s3.client()
    make_bucket(client, BUCKET)
    fault_proxy.fail_next(1000, 503, "SlowDown", operation="UploadPart")
    data = config_data(tmp_path, etcd35, fault_proxy.endpoint_url, max_attempts=2)
    result = run_cycle(parse_config(data))
    assert not result.ok
    assert "SlowDown" in (result.error or "")
    assert [d.ok for d in result.destinations] == [True, False]
    assert keys(client) == []
    assert uploads_in_progress(client) == []


def test_kill_mid_upload_leaves_no_object_and_housekeeping_cleans(
    etcd35: EtcdCluster, s3: MotoServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    bulk(etcd35, 12)
    client = s3.client()
    make_bucket(client, BUCKET)
    fault_proxy.delay(2.0, operation="UploadPart")
    data = config_data(tmp_path, etcd35, fault_proxy.endpoint_url, local=False)
    config = write_toml(tmp_path / "config.toml", data)
    process = start_cli(
        "once", "--config", str(config), stderr=subprocess.DEVNULL, env=s3_environment()
    )
    wait_until(lambda: fault_proxy.counts["UploadPart"], 60, interval=0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert fault_proxy.counts["UploadPart"] > 0
    assert keys(client) == []
    assert len(uploads_in_progress(client)) == 1

    settings = parse_config(data).destination[0]
    assert isinstance(settings, S3Destination)
    bucket = S3Bucket(settings)
    assert bucket.housekeeping(datetime.now(UTC)) == []  # a fresh upload may be live elsewhere
    aborted = bucket.housekeeping(datetime.now(UTC) + timedelta(days=2))
    assert len(aborted) == 1
    assert uploads_in_progress(client) == []


def test_prune_pages_past_1000_and_deletes_in_batches(
    s3: MotoServer, fault_proxy: FaultProxy
) -> None:
    client = s3.client()
    make_bucket(client, BUCKET)
    newest = datetime(2026, 11, 24, 12, tzinfo=UTC)
    names = [
        plant_s3(client, BUCKET, "prod/", "prod", newest - timedelta(hours=12 * i))
        for i in range(1100)
    ]
    client.put_object(Bucket=BUCKET, Key="prod/README", Body=b"not ours")
    client.put_object(Bucket=BUCKET, Key=f"other/{names[-1]}", Body=b"outside the prefix")
    settings = S3Destination(
        type="s3", name="s3", bucket=BUCKET, prefix="prod/", endpoint_url=fault_proxy.endpoint_url
    )
    fault_proxy.reset_counts()

    result = prune(
        S3Bucket(settings), RetentionPolicy(keep_last=5), now=newest, cluster=Cluster("prod")
    )

    assert len(result.deleted) == 1095
    # 1,100 snapshots and 1,100 manifests: two pages each, listed once; each manifest read
    # once, and the bucket's versioning (a GET too) once; 2,190 keys (snapshot and manifest
    # each): three batches
    assert fault_proxy.counts["ListObjectsV2"] == 4
    assert fault_proxy.counts["GetObject"] == 1101
    assert fault_proxy.counts["DeleteObjects"] == 3
    left = keys(client)
    assert "prod/README" in left
    assert f"other/{names[-1]}" in left
    assert {k for k in left if k.startswith("prod/etcd-snapshot")} == {
        f"prod/{n}" for n in names[:5]
    }
    assert set(keys(client, "prod/manifests/")) == {
        f"prod/manifests/{manifest_name(n)}" for n in names[:5]
    }


def test_object_locked_snapshots_are_kept(
    etcd35: EtcdCluster, s3: MotoServer, tmp_path: Path
) -> None:
    client = s3.client()
    make_bucket(client, BUCKET, object_lock=True)
    data = config_data(tmp_path, etcd35, s3.endpoint_url, local=False, object_lock_days=3)
    config = parse_config(data)
    first = run_cycle(config)
    assert first.ok, first.error
    (object_key,) = [k for k in keys(client) if k.endswith(".db")]
    head = client.head_object(Bucket=BUCKET, Key=object_key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=2)

    settings = config.destination[0]
    assert isinstance(settings, S3Destination)
    old = plant_s3(client, BUCKET, "prod/", "prod", datetime.now(UTC) - timedelta(days=1))
    result = prune(
        S3Bucket(settings),
        RetentionPolicy(keep_last=1),
        now=datetime.now(UTC),
        cluster=Cluster("prod"),
        lock=timedelta(days=3),
    )
    assert result.deleted == ()
    reasons = {d.snapshot.name: d.reasons for d in result.decisions}
    assert any("object-locked" in r for r in reasons[old])


def test_custom_endpoint_with_ca_bundle(
    etcd35: EtcdCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3_environment().items():
        monkeypatch.setenv(key, value)
    tls = make_tls(tmp_path / "tls")
    server = start_moto(tmp_path / "moto-tls", tls=tls)
    try:
        make_bucket(server.client(), BUCKET)
        data = config_data(
            tmp_path, etcd35, server.endpoint_url, local=False, ca_bundle=str(tls.ca)
        )
        result = run_cycle(parse_config(data))
        assert result.ok, result.error
        assert len([k for k in keys(server.client()) if k.endswith(".db")]) == 1

        data["destination"][0].pop("ca_bundle")
        untrusted = run_cycle(parse_config(data))
        assert not untrusted.ok
        assert "SSL" in (untrusted.error or "") or "certificate" in (untrusted.error or "")
    finally:
        server.stop()
