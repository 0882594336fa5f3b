"""Encrypted backups end to end: a real etcd, moto's S3, and Debian's age and zstd on the reading
side. What is stored decrypts to exactly the snapshot etcd wrote; no key name and no plaintext
reaches an encrypted destination, not even from a run killed mid-upload."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from etcd_backupd.formats import AGE
from tests.harness.cli import local_destination, run_cli, start_cli, write_config
from tests.harness.etcd import EtcdCluster, load_kubernetes_like_keys
from tests.harness.faultproxy import FaultProxy
from tests.harness.polling import wait_until
from tests.harness.s3 import MotoServer, make_bucket, s3_environment

BUCKET = "etcd-backups"
SECRET_KEY = "/registry/secrets/default/topsecret"
# a bbolt meta page's magic and version: plaintext snapshot bytes, too long to turn up by chance
BBOLT_MAGIC = (0xED0CDAED).to_bytes(4, "little") + (2).to_bytes(4, "little")

pytestmark = pytest.mark.skipif(
    not all(Path(f"/usr/bin/{tool}").exists() for tool in ("age", "age-keygen", "zstd")),
    reason="needs Debian's age and zstd",
)


def age_key(directory: Path, name: str = "key.txt") -> tuple[Path, str]:
    """A new identity file from age-keygen, and its recipient."""
    path = directory / name
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return path, recipient


def age_zstd_decrypt(stored: bytes, identity: Path) -> bytes:
    """`age -d -i KEY FILE | zstd -d`, as an operator without this tool reads a backup."""
    plain = subprocess.run(
        ["age", "-d", "-i", str(identity)], input=stored, capture_output=True, check=True
    ).stdout
    return subprocess.run(["zstd", "-d"], input=plain, capture_output=True, check=True).stdout


def fill(cluster: EtcdCluster, megabytes: int) -> None:
    """Kubernetes-shaped keys, a Secret whose name must never be seen in the clear, and
    `megabytes` of incompressible values so the upload takes several parts."""
    load_kubernetes_like_keys(cluster, count=100)
    client = cluster.client()
    client.put(SECRET_KEY, "hunter2")
    for i in range(megabytes):
        client.put(f"/registry/configmaps/bulk/{i:04d}", os.urandom(1_000_000))
    client.close()


def s3_destination(endpoint: str, **settings: Any) -> dict[str, Any]:
    return {
        "name": "s3",
        "type": "s3",
        "bucket": BUCKET,
        "prefix": "prod/",
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "part_size": 5 * 1024 * 1024,
        **settings,
    }


def sealed(recipient: str) -> dict[str, Any]:
    return {"compression": "zstd", "encryption": {"recipients": [recipient]}}


def objects(client: Any) -> dict[str, bytes]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    names = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    return {name: client.get_object(Bucket=BUCKET, Key=name)["Body"].read() for name in names}


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def snapshot_of(stored: dict[str, bytes]) -> tuple[str, bytes, dict[str, Any]]:
    """The one snapshot in a listing of names, its bytes and its manifest."""
    (name,) = [n for n in stored if n.endswith(".db.zst.age")]
    (manifest,) = [v for n, v in stored.items() if n.endswith(".manifest.json")]
    return name, stored[name], json.loads(manifest)


def test_once_stores_what_age_and_zstd_turn_back_into_the_snapshot_etcd_wrote(
    etcd35: EtcdCluster, s3: MotoServer, tmp_path: Path
) -> None:
    fill(etcd35, 12)
    identity, recipient = age_key(tmp_path)
    client = s3.client()
    make_bucket(client, BUCKET)
    config = write_config(
        tmp_path,
        etcd35,
        etcd={"cluster_name": "prod"},
        destinations=[
            # first, and plaintext: the spool file is stored here by a link, byte for byte
            local_destination(tmp_path / "plain", name="plain"),
            local_destination(tmp_path / "sealed", name="sealed", **sealed(recipient)),
            s3_destination(s3.endpoint_url, **sealed(recipient)),
        ],
    )
    result = run_cli("once", "--config", str(config), env=s3_environment())
    assert result.returncode == 0, result.stderr

    (plain_name,) = [p for p in (tmp_path / "plain").iterdir() if p.suffix == ".db"]
    snapshot = plain_name.read_bytes()
    # what the searches below would find in plaintext
    assert SECRET_KEY.encode() in snapshot and BBOLT_MAGIC in snapshot
    stored_objects = objects(client)
    for where, stored in (("local", files(tmp_path / "sealed")), ("s3", stored_objects)):
        name, data, manifest = snapshot_of(stored)
        assert name.rpartition("/")[2] == plain_name.name + ".zst.age", where
        assert data.startswith(AGE.magic), where
        assert age_zstd_decrypt(data, identity) == snapshot, where
        assert manifest["stored_format"] == "zstd+age"
        assert manifest["compression"] == "zstd"
        assert manifest["recipients"] == [recipient]
        assert manifest["snapshot_sha256"] == hashlib.sha256(snapshot).hexdigest()
        assert manifest["stored_sha256"] == hashlib.sha256(data).hexdigest()
        assert manifest["stored_size"] == len(data) and manifest["size"] == len(snapshot)
        assert "AGE-SECRET-KEY" not in json.dumps(manifest)
        for what, content in stored.items():
            assert b"topsecret" not in content, (where, what)
            assert BBOLT_MAGIC not in content or what.endswith(".json"), (where, what)

    (key,) = [k for k in stored_objects if k.endswith(".age")]
    head = client.head_object(Bucket=BUCKET, Key=key)
    assert head["Metadata"] == {
        "tool": "etcd-backupd",
        "run": head["Metadata"]["run"],
        "format": "zstd+age",
    }
    tags = client.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]
    assert "topsecret" not in json.dumps([head["Metadata"], tags])


def test_an_encrypted_local_destination_never_holds_the_plaintext_spool(
    etcd35: EtcdCluster, tmp_path: Path
) -> None:
    fill(etcd35, 2)
    _, recipient = age_key(tmp_path)
    config = write_config(
        tmp_path,
        etcd35,
        destinations=[local_destination(tmp_path / "sealed", name="sealed", **sealed(recipient))],
    )
    result = run_cli("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    spool = tmp_path / "state" / "spool"
    # streamed into state_dir (0700), and gone once the cycle ended
    assert spool.is_dir() and spool.stat().st_mode & 0o777 == 0o700
    assert list(spool.iterdir()) == []
    stored = files(tmp_path / "sealed")
    assert len(stored) == 2
    for what, content in stored.items():
        assert b"topsecret" not in content, what


def test_kill_9_mid_upload_leaves_no_plaintext_in_the_destinations(
    etcd35: EtcdCluster, s3: MotoServer, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    fill(etcd35, 12)
    _, recipient = age_key(tmp_path)
    client = s3.client()
    make_bucket(client, BUCKET)
    fault_proxy.delay(2.0, operation="UploadPart")
    config = write_config(
        tmp_path,
        etcd35,
        destinations=[
            local_destination(tmp_path / "sealed", name="sealed", **sealed(recipient)),
            s3_destination(fault_proxy.endpoint_url, **sealed(recipient)),
        ],
    )
    process = start_cli(
        "once", "--config", str(config), stderr=subprocess.DEVNULL, env=s3_environment()
    )
    wait_until(lambda: fault_proxy.counts["UploadPart"] >= 2, 60, interval=0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()

    parts = fault_proxy.bodies["UploadPart"]
    assert len(parts) >= 2 and len(b"".join(parts)) >= 2 * 5 * 1024 * 1024
    sent = b"".join(body for bodies in fault_proxy.bodies.values() for body in bodies)
    assert b"topsecret" not in sent and BBOLT_MAGIC not in sent
    assert any(part.startswith(AGE.magic) for part in parts)
    assert objects(client) == {}
    for what, content in files(tmp_path / "sealed").items():
        assert b"topsecret" not in content and BBOLT_MAGIC not in content, what
