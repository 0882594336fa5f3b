"""The metric contract: names, values from manifests and cycle results, age at scrape time."""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from etcd_backupd.config import MetricsConfig
from etcd_backupd.cycle import CycleResult, DestinationResult
from etcd_backupd.manifest import Manifest, MemberInfo, snapshot_name
from etcd_backupd.metrics import BackupMetrics, MetricsServer
from tests.harness.tls import make_tls

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def manifest(created: datetime, size: int = 1000, revision: int = 7) -> Manifest:
    return Manifest(
        snapshot=snapshot_name("c", created),
        created=created,
        duration_seconds=1.0,
        size=size,
        stored_size=size // 2,
        sha256="0" * 64,
        revision=revision,
        total_keys=42,
        live_keys=30,
        total_size=size - 32,
        hash=123,
        etcd_version="3.5.1",
        cluster_id="00000000000000ab",
        cluster_name="c",
        member=MemberInfo(id="1", name="m1", endpoint="http://127.0.0.1:2379", is_leader=True),
        tool_version="0.1.0",
    )


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_restart_loads_the_newest_backup_from_destinations() -> None:
    now = [T0.timestamp()]
    metrics = BackupMetrics(CollectorRegistry(), clock=lambda: now[0])
    older, newest = manifest(T0 - timedelta(days=1)), manifest(T0 - timedelta(hours=2), 2000, 9)
    metrics.load({"local": [older, newest], "s3": [older]})
    values = samples(metrics.registry)
    assert values[("etcd_backup_last_success_timestamp_seconds", ())] == newest.created.timestamp()
    assert values[("etcd_backup_last_success_age_seconds", ())] == 7200
    assert values[("etcd_backup_last_size_bytes", ())] == 2000
    assert values[("etcd_backup_last_revision", ())] == 9
    assert values[("etcd_backup_last_keys", ())] == 42
    assert values[("etcd_backup_destination_snapshots", (("destination", "local"),))] == 2
    assert values[("etcd_backup_destination_bytes", (("destination", "local"),))] == 1500
    s3_last = values[
        ("etcd_backup_destination_last_success_timestamp_seconds", (("destination", "s3"),))
    ]
    assert s3_last == older.created.timestamp()
    assert values[("etcd_backup_last_live_keys", ())] == 30
    assert metrics.cluster_id == "00000000000000ab"
    now[0] += 600
    assert samples(metrics.registry)[("etcd_backup_last_success_age_seconds", ())] == 7800


def test_no_backup_at_all_reads_as_infinitely_old() -> None:
    metrics = BackupMetrics(CollectorRegistry())
    metrics.load({"local": []})
    values = samples(metrics.registry)
    assert values[("etcd_backup_last_success_age_seconds", ())] == float("inf")
    # timestamps of "never": an alert on time() - timestamp sees a very old backup, not nothing
    assert values[("etcd_backup_last_success_timestamp_seconds", ())] == 0
    never = ("etcd_backup_destination_last_success_timestamp_seconds", (("destination", "local"),))
    assert values[never] == 0


def test_every_exported_series_names_the_cluster() -> None:
    metrics = BackupMetrics(CollectorRegistry())
    metrics.set_schedule(3600, {"local": 3600, "s3": 86400})
    before = samples(metrics.exposition)
    assert before, "nothing exported"
    # before etcd or a backup told which cluster this is, alerts still see the host
    assert all(("cluster_id", "unknown") in labels for _, labels in before)
    assert before[("etcd_backup_info", (("cluster_id", "unknown"), ("version", "0.1.0")))] == 1
    metrics.load({"local": [manifest(T0)]})
    after = samples(metrics.exposition)
    assert {name for name, _ in after} >= {name for name, _ in before}
    assert all(("cluster_id", "00000000000000ab") in labels for _, labels in after)
    assert after[("etcd_backup_last_live_keys", (("cluster_id", "00000000000000ab"),))] == 30
    interval = "etcd_backup_destination_schedule_interval_seconds"
    assert after[(interval, (("cluster_id", "00000000000000ab"), ("destination", "s3")))] == 86400
    assert (
        after[("etcd_backup_schedule_interval_seconds", (("cluster_id", "00000000000000ab"),))]
        == 3600
    )


def test_cycle_results_update_counters_and_histogram() -> None:
    metrics = BackupMetrics(CollectorRegistry(), clock=lambda: T0.timestamp())
    good = manifest(T0)
    metrics.observe(
        CycleResult(
            started=T0,
            finished=T0,
            ok=True,
            manifest=good,
            destinations=(DestinationResult("local", True, manifest=good),),
            stage_seconds={"snapshot": 3.0, "verify": 0.2, "ship": 0.1, "prune": 0.01},
        )
    )
    metrics.observe(
        CycleResult(started=T0, finished=T0, ok=False, error="x", failed_stage="snapshot")
    )
    metrics.skipped()
    values = samples(metrics.registry)
    assert values[("etcd_backup_runs_total", (("result", "success"),))] == 1
    assert values[("etcd_backup_runs_total", (("result", "failure"),))] == 1
    assert values[("etcd_backup_runs_total", (("result", "skipped"),))] == 1
    assert values[("etcd_backup_failures_total", (("stage", "snapshot"),))] == 1
    assert values[("etcd_backup_failures_total", (("stage", "verify"),))] == 0
    assert values[("etcd_backup_duration_seconds_count", (("stage", "snapshot"),))] == 1
    assert values[("etcd_backup_duration_seconds_sum", (("stage", "snapshot"),))] == 3.0
    assert values[("etcd_backup_last_success_age_seconds", ())] == 0


def test_metrics_server_with_tls_and_client_certificates(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    settings = MetricsConfig(
        listen="127.0.0.1:0", cert=tls.server_cert, key=tls.server_key, client_ca=tls.ca
    )
    metrics = BackupMetrics(CollectorRegistry())
    server = MetricsServer(metrics, settings, healthy=lambda: True, ready=lambda: False)
    try:
        url = f"https://127.0.0.1:{server.port}"
        trusted = ssl.create_default_context(cafile=str(tls.ca))
        with pytest.raises(OSError):
            urllib.request.urlopen(url + "/metrics", context=trusted, timeout=5)
        trusted.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        body = urllib.request.urlopen(url + "/metrics", context=trusted, timeout=5).read()
        assert b"etcd_backup_last_success_age_seconds" in body
        assert (
            urllib.request.urlopen(url + "/healthz", context=trusted, timeout=5).read() == b"ok\n"
        )
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(url + "/readyz", context=trusted, timeout=5)
        assert not_ready.value.code == 503
    finally:
        server.close()


def test_a_snapshot_no_destination_stored_still_names_the_cluster() -> None:
    metrics = BackupMetrics(CollectorRegistry())
    taken = manifest(T0)
    metrics.observe(
        CycleResult(
            started=T0,
            finished=T0,
            ok=False,
            manifest=taken,
            destinations=(DestinationResult("s3", False, error="access denied"),),
            error="s3: access denied",
            failed_stage="ship",
        )
    )
    assert metrics.cluster_id == taken.cluster_id
    values = samples(metrics.exposition)
    never = ("etcd_backup_last_success_timestamp_seconds", (("cluster_id", taken.cluster_id),))
    assert values[never] == 0


def test_a_future_dated_backup_is_counted_apart_and_never_the_newest() -> None:
    now = [T0.timestamp()]
    metrics = BackupMetrics(CollectorRegistry(), clock=lambda: now[0])
    real, planted = manifest(T0 - timedelta(hours=3)), manifest(T0 + timedelta(days=2))
    drift = manifest(T0 + timedelta(minutes=4))
    metrics.load({"local": [real, planted], "s3": [real, drift]})
    values = samples(metrics.registry)
    assert values[("etcd_backup_future_snapshots", (("destination", "local"),))] == 1
    assert values[("etcd_backup_future_snapshots", (("destination", "s3"),))] == 0
    # a few minutes of drift is believed; two days is not, and would pin the age at zero
    assert values[("etcd_backup_last_success_timestamp_seconds", ())] == drift.created.timestamp()
    local_last = values[
        ("etcd_backup_destination_last_success_timestamp_seconds", (("destination", "local"),))
    ]
    assert local_last == real.created.timestamp()
    now[0] += 3600
    assert samples(metrics.registry)[("etcd_backup_last_success_age_seconds", ())] == 3360


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_metrics_server_listens_on_an_ipv6_address() -> None:
    metrics = BackupMetrics(CollectorRegistry())
    server = MetricsServer(
        metrics, MetricsConfig(listen="[::1]:0"), healthy=lambda: True, ready=lambda: True
    )
    try:
        url = f"http://[::1]:{server.port}"
        assert urllib.request.urlopen(url + "/healthz", timeout=5).read() == b"ok\n"
        assert b"etcd_backup_" in urllib.request.urlopen(url + "/metrics", timeout=5).read()
    finally:
        server.close()


def test_metrics_server_on_a_name_listens_on_ipv4_as_before() -> None:
    metrics = BackupMetrics(CollectorRegistry())
    server = MetricsServer(
        metrics, MetricsConfig(listen="localhost:0"), healthy=lambda: True, ready=lambda: True
    )
    try:
        url = f"http://127.0.0.1:{server.port}/healthz"
        assert urllib.request.urlopen(url, timeout=5).read() == b"ok\n"
    finally:
        server.close()
