"""`etcd-backupd init --detect` on host layouts built in the test: kubeadm, kubeasz (systemd unit
and environment file), ETCDCTL_* variables, and nothing at all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

from tests.harness.cli import run_cli
from tests.harness.etcd import EtcdCluster

KUBEADM_MANIFEST = """apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/etcd.advertise-client-urls: https://192.168.7.101:2379
  labels:
    component: etcd
    tier: control-plane
  name: etcd
  namespace: kube-system
spec:
  containers:
  - command:
    - etcd
    - --advertise-client-urls=https://192.168.7.101:2379
    - --cert-file=/etc/kubernetes/pki/etcd/server.crt
    - --client-cert-auth=true
    - --data-dir=/var/lib/etcd
    - --experimental-initial-corrupt-check=true
    - --initial-advertise-peer-urls=https://192.168.7.101:2380
    - --initial-cluster=cp-1=https://192.168.7.101:2380
    - --key-file=/etc/kubernetes/pki/etcd/server.key
    - --listen-client-urls=https://127.0.0.1:{port},https://192.168.7.101:2379
    - --listen-metrics-urls=http://127.0.0.1:2381
    - --listen-peer-urls=https://192.168.7.101:2380
    - --name=cp-1
    - --peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt
    - --peer-client-cert-auth=true
    - --peer-key-file=/etc/kubernetes/pki/etcd/peer.key
    - --peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
    - --snapshot-count=10000
    - --trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt
    image: registry.k8s.io/etcd:3.5.15-0
    name: etcd
"""

KUBEASZ_UNIT = """[Unit]
Description=Etcd Server
After=network.target
Documentation=https://github.com/coreos

[Service]
Type=notify
WorkingDirectory=/var/lib/etcd
ExecStart=/opt/kube/bin/etcd \\
  --name=etcd-192.168.7.102 \\
  --cert-file=/etc/kubernetes/ssl/etcd.pem \\
  --key-file=/etc/kubernetes/ssl/etcd-key.pem \\
  --peer-cert-file=/etc/kubernetes/ssl/etcd.pem \\
  --peer-key-file=/etc/kubernetes/ssl/etcd-key.pem \\
  --trusted-ca-file=/etc/kubernetes/ssl/ca.pem \\
  --peer-trusted-ca-file=/etc/kubernetes/ssl/ca.pem \\
  --initial-advertise-peer-urls=https://192.168.7.102:2380 \\
  --listen-peer-urls=https://192.168.7.102:2380 \\
  --listen-client-urls=https://192.168.7.102:2379,http://127.0.0.1:2379 \\
  --advertise-client-urls=https://192.168.7.102:2379 \\
  --initial-cluster-token=etcd-cluster-0 \\
  --initial-cluster=etcd-192.168.7.101=https://192.168.7.101:2380,etcd-192.168.7.102=https://192.168.7.102:2380 \\
  --initial-cluster-state=new \\
  --data-dir=/var/lib/etcd \\
  --wal-dir= \\
  --snapshot-count=50000
Restart=always
RestartSec=15
LimitNOFILE=65536
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
"""  # noqa: E501

PACKAGE_UNIT = """[Service]
Type=notify
EnvironmentFile=-/etc/etcd/etcd.conf
User=etcd
ExecStart=/bin/bash -c "GOMAXPROCS=$(nproc) /usr/bin/etcd"
"""

PACKAGE_ENV = """#[Member]
ETCD_DATA_DIR="/var/lib/etcd/default.etcd"
ETCD_LISTEN_CLIENT_URLS="https://0.0.0.0:2379"
ETCD_NAME="db1"
#[Security]
ETCD_CERT_FILE="/etc/etcd/pki/server.crt"
ETCD_KEY_FILE="/etc/etcd/pki/server.key"
ETCD_TRUSTED_CA_FILE="/etc/etcd/pki/ca.crt"
ETCD_CLIENT_CERT_AUTH="true"
"""


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}


def init(
    root: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "init", "--detect", "--root", str(root), *extra,
        base_env=env if env is not None else clean_environment(),
        timeout=60,
    )  # fmt: skip


def place(root: Path, path: str, text: str = "placeholder\n") -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("check-config", "--config", str(config), timeout=60)


def on_the_node(text: str, root: Path) -> str:
    """The config as it reads on the node whose files lie under `root`."""
    return (
        text.replace('"/etc/', f'"{root}/etc/')
        .replace('"/var/backups/etcd"', json.dumps(str(root / "backups")))
        .replace('"/var/lib/etcd-backupd"', json.dumps(str(root / "state")))
    )


def test_kubeadm_layout_backs_up_the_real_member(etcd_tls: EtcdCluster, tmp_path: Path) -> None:
    root = tmp_path / "node"
    port = etcd_tls.endpoints[0].rsplit(":", 1)[1]
    place(root, "/etc/kubernetes/manifests/etcd.yaml", KUBEADM_MANIFEST.replace("{port}", port))
    assert etcd_tls.tls is not None
    pki = root / "etc/kubernetes/pki"
    (pki / "etcd").mkdir(parents=True)
    shutil.copy(etcd_tls.tls.ca, pki / "etcd/ca.crt")
    shutil.copy(etcd_tls.tls.client_cert, pki / "etcd/healthcheck-client.crt")
    shutil.copy(etcd_tls.tls.client_key, pki / "etcd/healthcheck-client.key")
    shutil.copy(etcd_tls.tls.client_cert, pki / "apiserver-etcd-client.crt")
    shutil.copy(etcd_tls.tls.client_key, pki / "apiserver-etcd-client.key")

    result = init(root)
    assert result.returncode == 0, result.stderr
    config = tomllib.loads(result.stdout)
    loopback = f"https://127.0.0.1:{port}"
    assert config["etcd"]["endpoints"] == [loopback]
    assert config["etcd"]["local_endpoint"] == loopback
    assert config["etcd"]["cacert"] == "/etc/kubernetes/pki/etcd/ca.crt"
    assert config["etcd"]["cert"] == "/etc/kubernetes/pki/etcd/healthcheck-client.crt"
    assert config["etcd"]["key"] == "/etc/kubernetes/pki/etcd/healthcheck-client.key"
    assert "found the kubeadm static pod manifest /etc/kubernetes/manifests/etcd.yaml" in (
        result.stderr
    )
    assert "client certificate: /etc/kubernetes/pki/etcd/healthcheck-client.crt" in result.stderr
    assert '# members = { cp-1 = "https://192.168.7.101:2380" }' in result.stdout
    assert "/run/credentials/etcd-backupd.service/etcd-client.key" in result.stdout

    # on the node (its files under root here), the config checks out and takes a backup
    written = tmp_path / "config.toml"
    assert init(root, "--output", str(written)).returncode == 0
    written.write_text(on_the_node(written.read_text(), root))
    checked = check_config(written)
    assert checked.returncode == 0, checked.stderr
    backed_up = run_cli("once", "--config", str(written), timeout=120)
    assert backed_up.returncode == 0, backed_up.stderr
    assert len(list((root / "backups").glob("etcd-snapshot-*.db"))) == 1

    again = init(root, "--output", str(written))
    assert again.returncode == 1
    assert f"{written} exists: remove it or choose another --output" in again.stderr

    # a kubeadm without the health-check certificate: the API server's etcd client certificate
    (pki / "etcd/healthcheck-client.crt").unlink()
    fallback = tomllib.loads(init(root).stdout)
    assert fallback["etcd"]["cert"] == "/etc/kubernetes/pki/apiserver-etcd-client.crt"
    assert fallback["etcd"]["key"] == "/etc/kubernetes/pki/apiserver-etcd-client.key"


def checked(tmp_path: Path, text: str, root: Path | None = None) -> dict[str, Any]:
    """The generated config, checked on the node (whose files are under `root` here)."""
    config = tmp_path / "generated.toml"
    config.write_text(on_the_node(text, root) if root is not None else text)
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    return tomllib.loads(text)


def test_kubeasz_unit_prefers_the_loopback_listener(tmp_path: Path) -> None:
    root = tmp_path / "node"
    place(root, "/etc/systemd/system/etcd.service", KUBEASZ_UNIT)
    result = init(root)
    assert result.returncode == 0, result.stderr
    config = checked(tmp_path, result.stdout)
    assert config["etcd"]["endpoints"] == ["http://127.0.0.1:2379"]
    assert config["etcd"]["local_endpoint"] == "http://127.0.0.1:2379"
    # plain http on loopback needs no TLS: the files are named, commented out
    assert "cacert" not in config["etcd"]
    assert '# cacert = "/etc/kubernetes/ssl/ca.pem"' in result.stdout
    assert '# cert = "/etc/kubernetes/ssl/etcd.pem"' in result.stdout
    assert "no kubeadm static pod manifest at /etc/kubernetes/manifests/etcd.yaml" in result.stderr
    assert "found the etcd unit /etc/systemd/system/etcd.service" in result.stderr
    assert "note: cacert /etc/kubernetes/ssl/ca.pem does not exist" in result.stderr
    assert (
        '# members = { etcd-192.168.7.101 = "https://192.168.7.101:2380", '
        'etcd-192.168.7.102 = "https://192.168.7.102:2380" }'
    ) in result.stdout


def test_package_unit_with_an_environment_file(tmp_path: Path) -> None:
    root = tmp_path / "node"
    place(root, "/usr/lib/systemd/system/etcd.service", PACKAGE_UNIT)
    place(root, "/etc/etcd/etcd.conf", PACKAGE_ENV)
    for name in ("server.crt", "server.key", "ca.crt"):
        place(root, f"/etc/etcd/pki/{name}")
    result = init(root)
    assert result.returncode == 0, result.stderr
    checked(tmp_path, result.stdout, root)
    config = tomllib.loads(result.stdout)
    # listening on every address: this host reaches it on loopback
    assert config["etcd"]["endpoints"] == ["https://127.0.0.1:2379"]
    assert config["etcd"]["local_endpoint"] == "https://127.0.0.1:2379"
    assert config["etcd"]["cacert"] == "/etc/etcd/pki/ca.crt"
    assert config["etcd"]["cert"] == "/etc/etcd/pki/server.crt"
    assert "environment file /etc/etcd/etcd.conf" in result.stderr
    assert "does not exist" not in result.stderr


def test_etcdctl_variables(tmp_path: Path) -> None:
    env = {
        **clean_environment(),
        "ETCDCTL_ENDPOINTS": "https://10.0.0.5:2379,127.0.0.1:2379",
        "ETCDCTL_CACERT": "/etc/ssl/etcd/ca.pem",
        "ETCDCTL_CERT": "/etc/ssl/etcd/admin.pem",
        "ETCDCTL_KEY": "/etc/ssl/etcd/admin-key.pem",
        "ETCDCTL_USER": "root:do-not-copy-me",
    }
    root = tmp_path / "node"
    for name in ("ca.pem", "admin.pem", "admin-key.pem"):
        place(root, f"/etc/ssl/etcd/{name}")
    result = init(root, env=env)
    assert result.returncode == 0, result.stderr
    checked(tmp_path, result.stdout, root)
    config = tomllib.loads(result.stdout)
    assert config["etcd"]["endpoints"] == ["https://127.0.0.1:2379", "https://10.0.0.5:2379"]
    assert config["etcd"]["local_endpoint"] == "https://127.0.0.1:2379"
    assert config["etcd"]["cert"] == "/etc/ssl/etcd/admin.pem"
    # a user needs its password, which is never copied: the lines wait for it, commented out
    assert "username" not in config["etcd"]
    assert '# username = "root"' in result.stdout
    assert "ETCDCTL_USER names the etcd user 'root'" in result.stderr
    assert "do-not-copy-me" not in result.stdout + result.stderr
    assert "found ETCDCTL_* variables in the environment" in result.stderr


def test_nothing_found_says_where_it_looked(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = init(tmp_path / "empty")
    assert result.returncode == 1
    assert result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"etcd-backupd: no etcd found under {tmp_path / 'empty'}")
    assert "no ETCDCTL_ENDPOINTS in the environment" in result.stderr
    assert "no etcd unit at /etc/systemd/system/etcd.service" in result.stderr
    # without --detect: a config for etcd's defaults, to fill in by hand
    plain = run_cli("init", timeout=60)
    assert plain.returncode == 0, plain.stderr
    assert checked(tmp_path, plain.stdout)["etcd"]["endpoints"] == ["http://127.0.0.1:2379"]


def test_the_written_config_is_the_owners_alone(tmp_path: Path) -> None:
    root = tmp_path / "node"
    place(root, "/etc/systemd/system/etcd.service", KUBEASZ_UNIT)
    written = tmp_path / "config.toml"
    assert init(root, "--output", str(written)).returncode == 0
    assert written.stat().st_mode & 0o777 == 0o600
    warned = check_config(written)
    assert warned.returncode == 0
    assert "other users may read it" not in warned.stderr
