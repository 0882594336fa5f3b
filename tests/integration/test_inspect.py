"""`inspect` and `diff` read snapshots the way etcd serves the restored keyspace."""

from __future__ import annotations

import json
import subprocess
from base64 import b64decode
from pathlib import Path

from tests.harness.cli import run_cli_bytes
from tests.harness.etcd import EtcdCluster, load_kubernetes_like_keys


def history(cluster: EtcdCluster) -> tuple[int, int]:
    """Overwrites, deletes, a lease and a transaction; returns (a past revision, the lease)."""
    load_kubernetes_like_keys(cluster, count=150)
    client = cluster.client()
    lease = client.lease(600)
    client.put("/registry/leases/kube-system/kube-controller-manager", "holder", lease=lease)
    _, meta = client.get("/registry/leases/kube-system/kube-controller-manager")
    past = meta.mod_revision
    client.put("/registry/pods/ns-1/obj-00001", "overwritten after the past revision")
    client.delete_prefix("/registry/configmaps/")
    client.transaction(
        compare=[],
        success=[
            client.transactions.put("/registry/txn/x", "1"),
            client.transactions.delete("/registry/pods/ns-2/obj-00002"),
        ],
        failure=[],
    )
    client.close()
    return past, lease.id


def test_inspect_matches_etcdctl_get(etcd_any: EtcdCluster, tmp_path: Path) -> None:
    past, lease = history(etcd_any)
    snapshot = tmp_path / "s.db"
    etcd_any.etcdctl("snapshot", "save", str(snapshot))

    for extra in ([], ["--keys-only"], ["--prefix", "/registry/pods/"]):
        ours = run_cli_bytes("inspect", str(snapshot), *extra)
        assert ours.returncode == 0, ours.stderr
        prefix = extra[1] if extra[:1] == ["--prefix"] else ""
        flags = ["--keys-only"] if "--keys-only" in extra else []
        theirs = etcd_any.etcdctl("get", prefix, "--prefix", *flags).stdout
        assert ours.stdout.decode() == theirs, extra

    at_past = run_cli_bytes("inspect", str(snapshot), "--revision", str(past))
    assert (
        at_past.stdout.decode() == etcd_any.etcdctl("get", "", "--prefix", f"--rev={past}").stdout
    )

    keys_then = run_cli_bytes(
        "inspect", str(snapshot), "--keys-only", "--prefix", "/registry/p", "--revision", str(past)
    )
    assert keys_then.returncode == 0, keys_then.stderr
    assert (
        keys_then.stdout.decode()
        == etcd_any.etcdctl("get", "/registry/p", "--prefix", "--keys-only", f"--rev={past}").stdout
    )
    for extra in ([], ["--keys-only"], ["--prefix", "/registry/pods/"], ["--prefix", "/none/"]):
        ours_json = run_cli_bytes("inspect", str(snapshot), "-o", "json", *extra)
        assert ours_json.returncode == 0, ours_json.stderr
        prefix = extra[1] if extra[:1] == ["--prefix"] else ""
        flags = ["--keys-only"] if "--keys-only" in extra else []
        theirs_json = json.loads(
            etcd_any.etcdctl("get", prefix, "--prefix", "-w", "json", *flags).stdout
        )
        del theirs_json["header"]  # only a live member has one
        assert json.loads(ours_json.stdout) == theirs_json, extra

    listed = json.loads(run_cli_bytes("inspect", str(snapshot), "-o", "json").stdout)["kvs"]
    leased = next(kv for kv in listed if b64decode(kv["key"]).endswith(b"kube-controller-manager"))
    assert leased["lease"] == lease
    assert b"/registry/configmaps/" not in b" ".join(b64decode(kv["key"]) for kv in listed)


def test_one_binary_value_goes_back_byte_for_byte(etcd35: EtcdCluster, tmp_path: Path) -> None:
    """The restore of one deleted object: its value out of a backup and into etcd again."""
    every_byte = bytes(range(256)) * 3
    key = "/registry/secrets/kube-system/bootstrap-token-abcdef"
    client = etcd35.client()
    client.put(key, every_byte)
    client.put("/registry/secrets/kube-system/bootstrap-token-abcdef-other", b"not this one")
    client.close()
    snapshot = tmp_path / "s.db"
    etcd35.etcdctl("snapshot", "save", str(snapshot))
    etcd35.etcdctl("del", key)

    value = run_cli_bytes("inspect", str(snapshot), key, "--print-value-only")
    assert value.returncode == 0, value.stderr
    assert value.stdout == every_byte
    saved = tmp_path / "obj.pb"
    saved.write_bytes(value.stdout)
    # as the README shows it: etcdctl put KEY < obj.pb
    with saved.open("rb") as stdin:
        subprocess.run(
            [str(etcd35.binaries.etcdctl), "--endpoints", etcd35.endpoints[0], "put", key],
            stdin=stdin,
            check=True,
            capture_output=True,
        )
    client = etcd35.client()
    back, _ = client.get(key)
    client.close()
    assert back == every_byte

    as_json = json.loads(run_cli_bytes("inspect", str(snapshot), key, "-o", "json").stdout)
    assert as_json["count"] == 1
    assert b64decode(as_json["kvs"][0]["value"]) == every_byte
    assert (
        run_cli_bytes("inspect", str(snapshot), key).stdout
        == key.encode() + b"\n" + every_byte + b"\n"
    )

    missing = run_cli_bytes(
        "inspect", str(snapshot), "/registry/secrets/none", "--print-value-only"
    )
    assert missing.returncode == 1
    assert b"holds no key '/registry/secrets/none'" in missing.stderr
    assert missing.stdout == b""
    no_key = run_cli_bytes("inspect", str(snapshot), "--print-value-only")
    assert no_key.returncode == 1
    assert b"--print-value-only needs a KEY" in no_key.stderr


def test_diff_between_two_backups(etcd35: EtcdCluster, tmp_path: Path) -> None:
    load_kubernetes_like_keys(etcd35, count=40)
    old = tmp_path / "old.db"
    etcd35.etcdctl("snapshot", "save", str(old))
    client = etcd35.client()
    client.put("/registry/pods/new/added", "hello")
    client.delete("/registry/pods/ns-0/obj-00000")
    client.put("/registry/deployments/ns-1/obj-00001", "changed")
    client.put("/registry/services/specs/ns-2/obj-00002", "changed, then back")
    client.close()
    value = etcd35.etcdctl("get", "/registry/secrets/ns-4/obj-00004", "--print-value-only")
    client = etcd35.client()
    client.put("/registry/secrets/ns-4/obj-00004", value.stdout.rstrip("\n"))
    client.close()
    new = tmp_path / "new.db"
    etcd35.etcdctl("snapshot", "save", str(new))

    result = run_cli_bytes("diff", str(old), str(new), "-o", "json")
    assert result.returncode == 0, result.stderr
    changes = json.loads(result.stdout)
    assert [b64decode(kv["key"]) for kv in changes["added"]] == [b"/registry/pods/new/added"]
    assert b64decode(changes["added"][0]["value"]) == b"hello"
    assert [b64decode(kv["key"]) for kv in changes["removed"]] == [b"/registry/pods/ns-0/obj-00000"]
    # rewriting the same value is no change in the keyspace
    assert sorted(b64decode(c["new"]["key"]).decode() for c in changes["changed"]) == [
        "/registry/deployments/ns-1/obj-00001",
        "/registry/services/specs/ns-2/obj-00002",
    ]
    scoped = json.loads(
        run_cli_bytes(
            "diff", str(old), str(new), "--prefix", "/registry/pods/", "-o", "json"
        ).stdout
    )
    assert scoped["changed"] == []
    assert len(scoped["added"]) == len(scoped["removed"]) == 1
    text = run_cli_bytes("diff", str(old), str(new))
    assert b"+ /registry/pods/new/added" in text.stdout
    assert b"1 added, 1 removed, 2 changed" in text.stderr


def test_inspect_refuses_a_damaged_snapshot(etcd35: EtcdCluster, tmp_path: Path) -> None:
    load_kubernetes_like_keys(etcd35, count=50)
    snapshot = tmp_path / "s.db"
    etcd35.etcdctl("snapshot", "save", str(snapshot))
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0x40
    snapshot.write_bytes(bytes(data))
    for flags in ([], ["--keys-only"]):
        result = run_cli_bytes("inspect", str(snapshot), *flags)
        assert result.returncode == 4
        assert b"does not match the snapshot's trailer" in result.stderr
        assert b"Traceback" not in result.stderr
        assert result.stdout == b""
