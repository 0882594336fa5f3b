"""restore, restore-plan and drills against real etcd 3.4 and 3.5 binaries."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from etcd_backupd.config import parse_config
from etcd_backupd.daemon import Daemon
from tests.harness.cli import local_destination, run_cli, write_config
from tests.harness.etcd import (
    EtcdBinaries,
    EtcdCluster,
    EtcdMember,
    enable_auth,
    free_port,
    load_kubernetes_like_keys,
)
from tests.harness.tls import make_tls

REPO = Path(__file__).resolve().parents[2]


def dump(binaries: EtcdBinaries, endpoint: str) -> dict[str, str]:
    output = subprocess.run(
        [str(binaries.etcdctl), f"--endpoints={endpoint}", "get", "", "--prefix", "-w", "json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    ).stdout
    kvs = json.loads(output).get("kvs", [])
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
        for kv in kvs
    }


def start_restored(
    binaries: EtcdBinaries, tmp: Path, name: str, data: Path, peer: str
) -> EtcdCluster:
    client = f"http://127.0.0.1:{free_port()}"
    command = [
        str(binaries.etcd),
        f"--name={name}",
        f"--data-dir={data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
    ]
    member = EtcdMember(name, client, peer, data, tmp / f"{name}-restored.log", command)
    cluster = EtcdCluster([member], binaries)
    member.start()
    try:
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def backup_config(tmp: Path, cluster: EtcdCluster, compression: str = "none") -> Path:
    return write_config(
        tmp,
        cluster,
        destinations=[local_destination(tmp / "backups", compression=compression)],
        drill={
            "bin_dir": str(cluster.binaries.etcd.parent),
            "expect_prefixes": ["/registry/pods/", "/calico/"],
        },
    )


def test_restored_member_serves_exactly_the_original_keys(
    etcd_any: EtcdCluster, tmp_path: Path
) -> None:
    load_kubernetes_like_keys(etcd_any, count=120)
    original = dump(etcd_any.binaries, etcd_any.endpoints[0])
    config = backup_config(tmp_path, etcd_any, compression="zstd")
    assert run_cli("once", "--config", str(config)).returncode == 0
    data = tmp_path / "restored"
    peer = f"http://127.0.0.1:{free_port()}"
    result = run_cli(
        "restore", "--config", str(config), "--destination", "local", "--snapshot", "latest",
        "--data-dir", str(data), "--name", "r1", "--initial-advertise-peer-urls", peer,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tool = "etcdutl" if etcd_any.binaries.etcdutl else "etcdctl"
    assert tool in result.stdout
    restored = start_restored(etcd_any.binaries, tmp_path, "r1", data, peer)
    try:
        assert dump(etcd_any.binaries, restored.endpoints[0]) == original
    finally:
        restored.stop()


def test_restore_takes_a_compressed_snapshot_by_its_base_name(
    etcd35: EtcdCluster, tmp_path: Path
) -> None:
    config = backup_config(tmp_path, etcd35, compression="zstd")
    assert run_cli("once", "--config", str(config)).returncode == 0
    stored = next((tmp_path / "backups").glob("*.db.zst")).name
    base = stored.removesuffix(".zst")
    common = ["--config", str(config), "--destination", "local"]

    typo = run_cli("restore", *common, "--snapshot", base.replace("Z.db", "X.db"),
               "--data-dir", str(tmp_path / "typo"))  # fmt: skip
    assert typo.returncode != 0
    assert f"did you mean {stored!r}?" in typo.stderr
    assert not (tmp_path / "typo").exists()

    restored = run_cli("restore", *common, "--snapshot", base, "--data-dir", str(tmp_path / "data"))
    assert restored.returncode == 0, restored.stderr
    # the token comes from the snapshot, so a member restored separately gets the same one
    stamp = base.removeprefix("etcd-snapshot-").removesuffix(".db")
    assert restored.stdout.rstrip().endswith(f"cluster token etcd-restore-{stamp}")
    assert (tmp_path / "data" / "member" / "snap" / "db").is_file()


def test_refusals_touch_nothing(etcd35: EtcdCluster, tmp_path: Path) -> None:
    config = backup_config(tmp_path, etcd35)
    assert run_cli("once", "--config", str(config)).returncode == 0
    snapshot = next((tmp_path / "backups").glob("*.db"))
    bins = str(etcd35.binaries.etcd.parent)

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "member").mkdir()
    refused = run_cli("restore", str(snapshot), "--data-dir", str(busy), "--etcd-bin-dir", bins)
    assert refused.returncode != 0
    assert "is not empty: refusing to overwrite it" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("busy")) == ["busy"]

    damaged = tmp_path / "damaged.db"
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 3] ^= 1
    damaged.write_bytes(bytes(data))
    refused = run_cli("restore", str(damaged), "--data-dir", str(tmp_path / "fresh"), "--force",
                  "--etcd-bin-dir", bins)  # fmt: skip
    assert refused.returncode == 4
    assert not (tmp_path / "fresh").exists()

    empty_bin = tmp_path / "no-tools"
    empty_bin.mkdir()
    refused = run_cli("restore", str(snapshot), "--data-dir", str(tmp_path / "fresh"),
                  "--etcd-bin-dir", str(empty_bin))  # fmt: skip
    assert refused.returncode != 0
    assert "no etcdutl or etcdctl found" in refused.stderr
    assert not (tmp_path / "fresh").exists()
    assert "Traceback" not in refused.stderr

    # a sound snapshot that is not the one its manifest describes is refused too
    manifest_path = next((tmp_path / "backups").glob("*.manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "sha256": "ab" * 32}))
    refused = run_cli("restore", "--config", str(config), "--destination", "local",
                  "--snapshot", "latest", "--data-dir", str(busy), "--force",
                  "--etcd-bin-dir", bins)  # fmt: skip
    assert refused.returncode == 4
    assert "but its manifest says" in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("busy")) == ["busy"]
    manifest_path.write_text(json.dumps(manifest))

    forced = run_cli(
        "restore", str(snapshot), "--data-dir", str(busy), "--force", "--etcd-bin-dir", bins
    )
    assert forced.returncode == 0, forced.stderr
    aside = [p.name for p in tmp_path.iterdir() if p.name.startswith("busy.before-restore-")]
    assert len(aside) == 1
    assert (tmp_path / aside[0] / "member").is_dir()
    assert (busy / "member" / "snap" / "db").is_file()


def start_tls_cluster(binaries: EtcdBinaries, tmp: Path, names: list[str]) -> EtcdCluster:
    """Members with client certificates whose data dirs are all `<home>/data`, as on hosts
    that share one layout: each member's script then runs unchanged in its own home."""
    tls = make_tls(tmp / "tls")
    peers = {n: f"http://127.0.0.1:{free_port()}" for n in names}
    clients = {n: f"https://127.0.0.1:{free_port()}" for n in names}
    initial = ",".join(f"{n}={peers[n]}" for n in names)
    members = []
    for name in names:
        data = tmp / name / "data"
        data.parent.mkdir()
        command = [
            str(binaries.etcd), f"--name={name}", f"--data-dir={data}",
            f"--listen-client-urls={clients[name]}", f"--advertise-client-urls={clients[name]}",
            f"--listen-peer-urls={peers[name]}", f"--initial-advertise-peer-urls={peers[name]}",
            f"--initial-cluster={initial}", "--initial-cluster-token=before-the-disaster",
            "--initial-cluster-state=new", "--log-level=warn",
            f"--cert-file={tls.server_cert}", f"--key-file={tls.server_key}",
            "--client-cert-auth", f"--trusted-ca-file={tls.ca}",
        ]  # fmt: skip
        members.append(
            EtcdMember(name, clients[name], peers[name], data, tmp / f"{name}.log", command)
        )
    cluster = EtcdCluster(members, binaries, tls=tls, client_cert_auth=True)
    try:
        for member in members:
            member.start()
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def command_on_path(bin_dir: Path) -> dict[str, str]:
    """An environment whose `etcd-backupd` is this checkout's, as installed on a member."""
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "etcd-backupd"
    wrapper.write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} "
        f'exec {shlex.quote(sys.executable)} -m etcd_backupd.cli "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_BACKUPD_")}
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_restore_plan_scripts_restore_a_three_member_tls_cluster_from_zstd(
    etcd_binaries_35: EtcdBinaries, tmp_path: Path
) -> None:
    names = ["etcd1", "etcd2", "etcd3"]
    cluster = start_tls_cluster(etcd_binaries_35, tmp_path, names)
    try:
        enable_auth(cluster, "s3cret-root")
        original = load_kubernetes_like_keys(cluster, count=80)
        assert cluster.tls is not None
        (tmp_path / "password").write_text("s3cret-root\n")
        config = write_config(
            tmp_path,
            cluster,
            etcd={
                "cacert": cluster.tls.ca,
                "cert": cluster.tls.client_cert,
                "key": cluster.tls.client_key,
                "username": "root",
                "password_file": tmp_path / "password",
            },
            destinations=[local_destination(tmp_path / "backups", compression="zstd")],
            restore={
                "members": {m.name: m.peer_url for m in cluster.members},
                "client_urls": {m.name: m.client_url for m in cluster.members},
            },
        )
        backup = run_cli("once", "--config", str(config))
        assert backup.returncode == 0, backup.stderr
        cluster.etcdctl("put", "/registry/written-after-the-backup", "gone after the restore")

        scripts = tmp_path / "scripts"
        plan = run_cli("restore-plan", "--config", str(config), "--destination", "local",
                   "--snapshot", "latest", "--layout", "systemd", "--data-dir", "data",
                   "--etcd-bin-dir", str(etcd_binaries_35.etcd.parent),
                   "--etcdctl", str(etcd_binaries_35.etcdctl), "--health-timeout", "60",
                   # etcdutl 3.5.1 has no --bump-revision
                   "--no-bump", "--output", "script", "--script-dir", str(scripts))  # fmt: skip
        assert plan.returncode == 0, plan.stderr
        assert not any("s3cret" in p.read_text() for p in scripts.iterdir())
        env = command_on_path(tmp_path / "bin")

        def step(name: str, *steps: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["sh", str(scripts / f"restore-{name}.sh"), *steps],
                cwd=tmp_path / name, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip

        # fetched, decompressed, verified and restored beside the data dir while etcd runs
        for name in names:
            prepared = step(name, "prepare")
            assert prepared.returncode == 0, prepared.stdout + prepared.stderr
            assert (tmp_path / name / "data.restoring" / "member").is_dir()
        # stop_etcd/start_etcd call systemctl: the test does their work, by PID
        cluster.stop()
        for name in names:
            swapped = step(name, "swap_data_dir")
            assert swapped.returncode == 0, swapped.stdout + swapped.stderr
            assert len(list((tmp_path / name).glob("data.before-restore-*"))) == 1
        cluster.members[0].start()
        first = subprocess.Popen(
            ["sh", str(scripts / "restore-etcd1.sh"), "wait_healthy", "checks"],
            cwd=tmp_path / "etcd1", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            # the first member back waits for the others instead of failing its check
            with pytest.raises(subprocess.TimeoutExpired):
                first.wait(timeout=3)
            for member in cluster.members[1:]:
                member.start()
            out, err = first.communicate(timeout=90)
        finally:
            first.kill()
        assert first.returncode == 0, out + err
        assert all(name in out for name in names)
        for name in names[1:]:
            checked = step(name, "wait_healthy", "checks")
            assert checked.returncode == 0, checked.stdout + checked.stderr

        listed = json.loads(cluster.etcdctl("get", "", "--prefix", "-w", "json").stdout)
        restored = {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"])
            for kv in listed["kvs"]
        }
        assert restored == original
    finally:
        cluster.stop()


def test_restore_plan_kubeadm_steps_move_the_static_pods_and_back(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    plan = run_cli("restore-plan", "--member", "etcd1=https://10.0.0.1:2380", "--snapshot",
               "/s.db", "--layout", "kubeadm", "--output", "script",
               "--script-dir", str(scripts))  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    manifests, aside = tmp_path / "manifests", tmp_path / "aside"
    manifests.mkdir()
    pods = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    for pod in [*pods, "keepalived"]:
        (manifests / f"{pod}.yaml").write_text(f"# {pod}\n")
    # the kubelet's directories of this host
    script = scripts / "restore-etcd1.sh"
    text = script.read_text()
    text = text.replace("MANIFESTS=/etc/kubernetes/manifests\n", f"MANIFESTS={manifests}\n")
    text = re.sub(r"(?m)^MANIFESTS_ASIDE=\S+", f"MANIFESTS_ASIDE={aside}", text)
    text = re.sub(r"(?m)^STOP_TIMEOUT=\d+", "STOP_TIMEOUT=1", text)
    script.write_text(text)
    # the container runtime: crictl lists what a "running" file names, and logs its calls
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "crictl.calls"
    running = tmp_path / "running"
    crictl = bin_dir / "crictl"
    crictl.write_text(f'#!/bin/sh\necho "$*" >> {calls}\ncat {running} 2>/dev/null || true\n')
    crictl.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def step(*steps: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(script), *steps], env=env, capture_output=True,
                              text=True, timeout=30)  # fmt: skip

    def names(directory: Path) -> list[str]:
        return sorted(p.stem for p in directory.glob("*.yaml"))

    running.write_text("3f2a9c\n")
    stuck = step("stop_kubernetes")
    assert stuck.returncode != 0
    assert "the kube-apiserver container still runs 1 s after its manifest left" in stuck.stderr
    assert "resume with: sh " in stuck.stderr and "stop_kubernetes" in stuck.stderr
    running.unlink()

    stopped = step("stop_kubernetes", "stop_etcd")
    assert stopped.returncode == 0, stopped.stderr
    assert names(manifests) == ["keepalived"]
    assert names(aside) == sorted(pods)
    assert "ps --quiet --name ^etcd$" in calls.read_text().splitlines()
    assert step("start_etcd").returncode == 0
    assert names(manifests) == ["etcd", "keepalived"]
    assert step("start_kubernetes").returncode == 0
    assert names(manifests) == sorted([*pods, "keepalived"])
    assert not aside.exists()


@pytest.mark.parametrize("given", [None, "65534:65534"])
def test_swap_gives_the_restored_data_dir_to_etcds_user(given: str | None, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("handing files to another user needs root")
    owner = ["--data-dir-owner", given] if given else []
    plan = run_cli("restore-plan", "--member", "etcd1=https://10.0.0.1:2380", "--snapshot", "/s.db",
               "--layout", "systemd", "--data-dir", "data", *owner, "--output", "script",
               "--script-dir", str(tmp_path))  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    script = str(tmp_path / "restore-etcd1.sh")
    missing = subprocess.run(["sh", script, "swap_data_dir"], cwd=tmp_path, capture_output=True,
                             text=True, check=False)  # fmt: skip
    assert missing.returncode == 1
    assert "data.restoring holds no restored member: run the prepare step first" in missing.stderr
    # an etcd that runs as its own user (here: nobody), and a restore made by root
    (tmp_path / "data" / "member").mkdir(parents=True)
    os.chown(tmp_path / "data", 65534, 65534)
    (tmp_path / "data.restoring" / "member" / "snap").mkdir(parents=True)
    (tmp_path / "data.restoring" / "member" / "snap" / "db").write_bytes(b"restored")
    swapped = subprocess.run(["sh", script, "swap_data_dir"], cwd=tmp_path, capture_output=True,
                             text=True, check=False)  # fmt: skip
    assert swapped.returncode == 0, swapped.stderr
    restored = tmp_path / "data"
    assert (restored / "member" / "snap" / "db").read_bytes() == b"restored"
    for path in [restored, *restored.rglob("*")]:
        assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534), path
    (aside,) = tmp_path.glob("data.before-restore-*")
    assert (aside / "member").is_dir()
    assert not (tmp_path / "data.restoring").exists()


def test_drills_pass_and_fail_with_metrics(etcd35: EtcdCluster, tmp_path: Path) -> None:
    load_kubernetes_like_keys(etcd35, count=60)
    config_path = backup_config(tmp_path, etcd35)
    assert run_cli("once", "--config", str(config_path)).returncode == 0
    passed = run_cli("drill", "--config", str(config_path))
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "drill of etcd-snapshot-" in passed.stdout and "passed" in passed.stdout

    import tomllib

    config = parse_config(tomllib.loads(config_path.read_text()))
    daemon = Daemon(config_path, config)
    daemon._drill()
    registry = daemon.metrics.registry
    last = registry.get_sample_value(
        "etcd_backup_drill_last_success_timestamp_seconds", {"destination": "local"}
    )
    assert last is not None and last > time.time() - 60

    manifest_path = next((tmp_path / "backups").glob("*.manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["revision"] += 1
    manifest_path.write_text(json.dumps(manifest))
    failed = run_cli("drill", "--config", str(config_path))
    assert failed.returncode == 6
    assert "FAILED" in failed.stdout and "manifest says revision" in failed.stdout
    daemon._drill()
    failures = {"destination": "local"}
    assert registry.get_sample_value("etcd_backup_drill_failures_total", failures) == 1


@pytest.mark.parametrize("flag", ["--member", "--client-url"])
def test_restore_plan_rejects_bad_members(flag: str) -> None:
    args = ["restore-plan", "--snapshot", "/s.db", "--member", "etcd1=https://10.0.0.1:2380"]
    result = run_cli(*args, flag, "etcd2")
    assert result.returncode != 0
    assert "is not NAME=URL" in result.stderr


def test_restore_plan_takes_the_members_from_the_config(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        restore={
            "members": {"etcd1": "https://10.0.0.1:2380", "etcd2": "https://10.0.0.2:2380"},
            "client_urls": {"etcd2": "https://10.0.0.2:12379"},
        },
    )
    plan = run_cli("restore-plan", "--config", str(config), "--snapshot", "/s.db")
    assert plan.returncode == 0, plan.stderr
    for name, peer in [("etcd1", "https://10.0.0.1:2380"), ("etcd2", "https://10.0.0.2:2380")]:
        assert f"MEMBER_NAME={name}" in plan.stdout
        assert peer in plan.stdout
    assert "https://10.0.0.1:2379" in plan.stdout and "https://10.0.0.2:12379" in plan.stdout

    given = run_cli("restore-plan", "--config", str(config), "--snapshot", "/s.db",
                "--member", "etcd7=https://10.0.0.7:2380")  # fmt: skip
    assert given.returncode == 0, given.stderr
    assert "10.0.0.7:2380" in given.stdout and "10.0.0.1" not in given.stdout

    nobody = run_cli("restore-plan", "--snapshot", "/s.db")
    assert nobody.returncode != 0
    assert "no members: give --member NAME=PEER_URL" in nobody.stderr
