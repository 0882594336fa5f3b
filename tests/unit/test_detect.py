"""How `init --detect` reads etcd's flags: client URLs, quoting, continuation lines."""

from __future__ import annotations

from pathlib import Path

from etcd_backupd.detect import detect


def place(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def test_quoted_manifest_flags_and_an_ipv6_loopback(tmp_path: Path) -> None:
    place(
        tmp_path,
        "/etc/kubernetes/manifests/etcd.yaml",
        "spec:\n  containers:\n  - command:\n    - etcd\n"
        '    - "--listen-client-urls=https://[2001:db8::5]:2379,https://[::1]:2379"\n'
        "    - '--trusted-ca-file=/pki/etcd/ca.crt'\n",
    )
    found = detect(tmp_path, {}).found
    assert found is not None
    assert found.endpoints == ["https://[::1]:2379"]
    assert found.local_endpoint == "https://[::1]:2379"
    assert found.cacert == "/pki/etcd/ca.crt"


def test_an_etcd_on_every_address_is_reached_on_loopback(tmp_path: Path) -> None:
    place(
        tmp_path,
        "/etc/systemd/system/etcd.service",
        '[Service]\nEnvironment="ETCD_NAME=a" ETCD_ADVERTISE_CLIENT_URLS=http://10.1.1.1:2379\n'
        "ExecStart=/usr/bin/etcd --listen-client-urls http://0.0.0.0:2379 \\\n"
        "    --data-dir /var/lib/etcd\n",
    )
    found = detect(tmp_path, {}).found
    assert found is not None
    assert found.endpoints == ["http://127.0.0.1:2379"]


def test_without_listen_urls_etcds_default_is_assumed(tmp_path: Path) -> None:
    place(tmp_path, "/etc/etcd/etcd.conf", 'ETCD_NAME="solo"\n')
    found = detect(tmp_path, {}).found
    assert found is not None
    assert found.endpoints == ["http://127.0.0.1:2379"]


def test_a_manifest_without_flags_falls_through_to_the_environment(tmp_path: Path) -> None:
    place(tmp_path, "/etc/kubernetes/manifests/etcd.yaml", "kind: Pod\n")
    detection = detect(tmp_path, {"ETCDCTL_ENDPOINTS": "10.0.0.9:2379"})
    assert detection.found is not None
    assert detection.found.layout == "environment"
    assert detection.found.endpoints == ["http://10.0.0.9:2379"]
    # not a loopback URL: which member is this host's is unknown
    assert detection.found.local_endpoint is None
    assert "holds no etcd flags; skipped" in " ".join(detection.report)
