"""Encrypted backups end to end: a real etcd, moto's S3, and Debian's age and zstd on the reading
side. What is stored decrypts to exactly the snapshot etcd wrote; no key name and no plaintext
reaches an encrypted destination, not even from a run killed mid-upload."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from etcd_backupd.config import load_config
from etcd_backupd.daemon import Daemon
from etcd_backupd.formats import AGE
from tests.harness.cli import local_destination, run_cli, start_cli, write_config
from tests.harness.cli import s3_destination as moto_destination
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
    return moto_destination(endpoint, BUCKET, part_size=5 * 1024 * 1024, **settings)


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


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """The command failed with `code` and one line of error, its last (restore logs its steps
    before it), naming `needles`; no traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("etcd-backupd:")]
    assert errors == result.stderr.splitlines()[-1:], result.stderr
    for needle in needles:
        assert needle in errors[0], result.stderr


def test_encrypted_backups_read_back_restore_and_drill_with_an_identity_only(
    etcd35: EtcdCluster, s3: MotoServer, tmp_path: Path
) -> None:
    fill(etcd35, 1)
    identity, recipient = age_key(tmp_path)
    other, _ = age_key(tmp_path, "other.txt")
    client = s3.client()
    make_bucket(client, BUCKET)
    bins = str(etcd35.binaries.etcd.parent)
    config = write_config(
        tmp_path,
        etcd35,
        mode=0o600,
        etcd={"cluster_name": "prod"},
        drill={"bin_dir": bins, "expect_prefixes": ["/registry/pods/"]},
        destinations=[
            local_destination(tmp_path / "sealed", name="local", **sealed(recipient)),
            s3_destination(s3.endpoint_url, **sealed(recipient)),
        ],
    )
    env = s3_environment()
    assert run_cli("once", "--config", str(config), env=env).returncode == 0
    (stored,) = (tmp_path / "sealed").glob("*.db.zst.age")
    manifest = json.loads(stored.with_name(stored.name + ".manifest.json").read_text())

    # names and manifests are in the clear: listing and pruning need no identity
    listed = run_cli("list", "--config", str(config), env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count(stored.name) == 2
    pruned = run_cli("prune", "--config", str(config), "--dry-run", env=env)
    assert pruned.returncode == 0, pruned.stderr

    # reading one back takes the identity, from --identity or the environment
    one_line_error(run_cli("verify", str(stored)), 8, "takes an identity file")
    one_line_error(
        run_cli("verify", str(stored), "--identity", str(other)),
        8,
        "no identity given can decrypt it",
    )
    verified = run_cli("verify", str(stored), env={"ETCD_BACKUPD_AGE_IDENTITY_FILE": str(identity)})
    assert verified.returncode == 0, verified.stderr
    assert f"revision    {manifest['revision']}" in verified.stdout
    value = run_cli(
        "inspect", str(stored), SECRET_KEY, "--print-value-only", "--identity", str(identity)
    )
    assert (value.returncode, value.stdout) == (0, "hunter2")

    drilled = run_cli("drill", "--config", str(config), env=env)
    assert drilled.returncode == 8, drilled.stdout + drilled.stderr
    assert drilled.stdout.count("FAILED") == 2 and "takes an identity file" in drilled.stdout
    drilled = run_cli("drill", "--config", str(config), "--identity", str(identity), env=env)
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    assert drilled.stdout.count("passed") == 2
    # the daemon's drills, and `drill` without --identity, use [drill] identity_file
    identity.chmod(0o600)
    with_identity = write_config(
        tmp_path,
        etcd35,
        name="with-identity.toml",
        mode=0o600,
        etcd={"cluster_name": "prod"},
        drill={
            "bin_dir": bins,
            "expect_prefixes": ["/registry/pods/"],
            "identity_file": str(identity),
        },
        destinations=[
            local_destination(tmp_path / "sealed", name="local", **sealed(recipient)),
            s3_destination(s3.endpoint_url, **sealed(recipient)),
        ],
    )
    drilled = run_cli("drill", "--config", str(with_identity), "--destination", "s3", env=env)
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    # the daemon's drills: without an identity each fails, with [drill] identity_file each passes
    for path, metric in (
        (config, "etcd_backup_drill_failures_total"),
        (with_identity, "etcd_backup_drill_last_success_timestamp_seconds"),
    ):
        daemon = Daemon(path, load_config(path))
        daemon.scheduler.drill_now()
        for destination in ("local", "s3"):
            sample = daemon.metrics.registry.get_sample_value(metric, {"destination": destination})
            assert sample, (path.name, destination, metric)

    for destination in ("local", "s3"):
        restore = [
            "restore", "--config", str(config), "--destination", destination,
            "--snapshot", "latest", "--etcd-bin-dir", bins,
        ]  # fmt: skip
        refused = tmp_path / f"refused-{destination}"
        one_line_error(
            run_cli(*restore, "--data-dir", str(refused), "--identity", str(other), env=env),
            8,
            "no identity given can decrypt it",
        )
        assert not refused.exists()
        data = tmp_path / f"restored-{destination}"
        restored = run_cli(
            *restore,
            "--data-dir",
            str(data),
            env={**env, "ETCD_BACKUPD_AGE_IDENTITY_FILE": str(identity)},
        )
        assert restored.returncode == 0, restored.stderr
        assert restored.stdout.startswith(f"restored revision {manifest['revision']} ")
        assert (data / "member" / "snap" / "db").is_file()


def test_a_snapshot_zstd_and_age_wrote_verifies_and_restores_with_an_identity(
    etcd35: EtcdCluster, tmp_path: Path
) -> None:
    fill(etcd35, 1)
    identity, recipient = age_key(tmp_path)
    config = write_config(tmp_path, etcd35)
    assert run_cli("once", "--config", str(config)).returncode == 0
    (plain,) = (tmp_path / "backups").glob("*.db")
    packed = subprocess.run(["zstd", "-c", str(plain)], capture_output=True, check=True).stdout
    sealed_file = tmp_path / (plain.name + ".zst.age")
    subprocess.run(["age", "-r", recipient, "-o", str(sealed_file)], input=packed, check=True)
    verified = run_cli("verify", str(sealed_file), "--identity", str(identity))
    assert verified.returncode == 0, verified.stderr
    restored = run_cli(
        "restore", str(sealed_file), "--identity", str(identity),
        "--data-dir", str(tmp_path / "data"), "--etcd-bin-dir", str(etcd35.binaries.etcd.parent),
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "data" / "member" / "snap" / "db").is_file()


def test_a_stored_object_replaced_by_another_backup_is_refused_before_it_is_decrypted(
    etcd35: EtcdCluster, tmp_path: Path
) -> None:
    """Another backup's stored file, decryptable with the same identity, put in place of the
    newest: restore and drill refuse it on the stored SHA-256 its manifest recorded."""
    identity, recipient = age_key(tmp_path)
    bins = str(etcd35.binaries.etcd.parent)
    config = write_config(
        tmp_path,
        etcd35,
        etcd={"cluster_name": "prod"},
        drill={"bin_dir": bins, "expect_prefixes": ["/registry/"]},
        destinations=[local_destination(tmp_path / "sealed", name="local", **sealed(recipient))],
    )
    fill(etcd35, 0)
    assert run_cli("once", "--config", str(config)).returncode == 0
    # snapshot names carry the second they were taken in
    first = int(time.time())
    wait_until(lambda: int(time.time()) > first, timeout=3)
    client = etcd35.client()
    client.put("/registry/configmaps/default/later", "more")
    client.close()
    assert run_cli("once", "--config", str(config)).returncode == 0
    older, newest = sorted((tmp_path / "sealed").glob("*.db.zst.age"))
    replacement = tmp_path / "replacement"
    replacement.write_bytes(older.read_bytes())
    os.replace(replacement, newest)

    refused = tmp_path / "refused"
    restore = [
        "restore", "--config", str(config), "--destination", "local",
        "--snapshot", newest.name, "--etcd-bin-dir", bins, "--data-dir", str(refused),
        "--identity", str(identity),
    ]  # fmt: skip
    one_line_error(
        run_cli(*restore),
        4,
        newest.name,
        "'local'",
        "the stored object does not match its manifest (damaged or replaced)",
    )
    assert not refused.exists()
    drilled = run_cli(
        "drill", "--config", str(config), "--destination", "local", "--identity", str(identity)
    )
    assert drilled.returncode == 6, drilled.stdout + drilled.stderr
    assert "FAILED" in drilled.stdout, drilled.stdout
    assert "the stored object does not match its manifest (damaged or replaced)" in (
        drilled.stdout
    ), drilled.stdout
