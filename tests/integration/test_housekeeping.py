"""Housekeeping removes only what interrupted runs of this tool left: its own `.part` files and
its own incomplete multipart uploads, never another application's files or uploads."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from etcd_backupd.config_destinations import LocalDestination, S3Destination
from etcd_backupd.destinations.local import LocalDirectory
from etcd_backupd.destinations.s3 import S3Bucket
from etcd_backupd.manifest import snapshot_name
from tests.harness.s3 import MotoServer, make_bucket
from tests.integration.test_s3 import BUCKET, uploads_in_progress


def aged(path: Path, data: bytes = b"x") -> Path:
    path.write_bytes(data)
    stale = time.time() - 7200
    os.utime(path, (stale, stale))
    return path


def test_local_housekeeping_removes_only_its_own_part_files(tmp_path: Path) -> None:
    ours = snapshot_name("prod", datetime.now(UTC) - timedelta(hours=3))
    left = [
        aged(tmp_path / f"{ours}.0123456789ab.part"),  # the spool of a killed run
        aged(tmp_path / f"{ours}.manifest.json.ba9876543210.part"),
        aged(tmp_path / f"{ours}.part"),  # named as earlier versions named it
    ]
    foreign = [
        aged(tmp_path / "my-upload.part"),
        aged(tmp_path / "etcd-snapshot-notes.txt.part"),
        aged(tmp_path / "backup.db.0123456789ab.part"),
    ]
    target = aged(tmp_path / "victim", b"keep me")
    (tmp_path / f"{snapshot_name('prod', datetime.now(UTC))}.00000000000a.part").symlink_to(target)
    fresh = tmp_path / f"{snapshot_name('prod', datetime.now(UTC))}.feedfeedfeed.part"
    fresh.write_bytes(b"a live run's spool")

    destination = LocalDirectory(LocalDestination(type="local", name="local", path=tmp_path))
    removed = destination.housekeeping(datetime.now(UTC))

    assert sorted(removed) == sorted(p.name for p in left)
    assert not any(p.exists() for p in left)
    assert all(p.exists() for p in foreign)
    assert fresh.exists()
    assert target.read_bytes() == b"keep me"


@pytest.mark.parametrize("prefix", ["", "prod/"])
def test_s3_housekeeping_aborts_only_its_own_uploads(s3: MotoServer, prefix: str) -> None:
    client = s3.client()
    make_bucket(client, BUCKET)
    ours = prefix + snapshot_name("prod", datetime.now(UTC))
    others = [
        prefix + "their-app/video.mp4",
        prefix + "my-upload.bin",
        prefix + "nested/" + snapshot_name("prod", datetime.now(UTC)),
        "elsewhere/" + snapshot_name("prod", datetime.now(UTC)),
    ]
    for key in [ours, *others]:
        client.create_multipart_upload(Bucket=BUCKET, Key=key)
    bucket = S3Bucket(
        S3Destination(
            type="s3",
            name="s3",
            bucket=BUCKET,
            prefix=prefix,
            endpoint_url=s3.endpoint_url,
            region="us-east-1",
        )
    )

    later = datetime.now(UTC) + timedelta(days=2)
    assert bucket.housekeeping(later) == [f"incomplete upload of {ours}"]
    assert sorted(u["Key"] for u in uploads_in_progress(client)) == sorted(others)
    assert not bucket.in_progress(datetime.now(UTC) - timedelta(hours=1))
