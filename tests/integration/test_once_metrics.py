"""`once --textfile` and `once --pushgateway`: a CronJob or timer alerts like the daemon does."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from etcd_backupd import __version__
from etcd_backupd.manifest import Manifest
from etcd_backupd.metrics import BackupMetrics, push
from tests.harness.cli import run_cli, write_config
from tests.harness.etcd import EtcdCluster, free_port, load_kubernetes_like_keys
from tests.harness.polling import wait_until

PUSHGATEWAY = shutil.which("prometheus-pushgateway")
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def label(key: str, value: str) -> tuple[str, str]:
    # the pushgateway writes bucket bounds as 1, the client library as 1.0
    return (key, repr(float(value))) if key == "le" else (key, value)


def series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    ignored = {"job", "instance", "cluster_id"}
    return {
        (s.name, tuple(sorted(label(k, v) for k, v in s.labels.items() if k not in ignored))): (
            s.value
        )
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("etcd_backup_")
    }


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    if PUSHGATEWAY is None:
        pytest.skip("prometheus-pushgateway not installed (Debian prometheus-pushgateway)")
    port = free_port()
    log = (tmp_path / "pushgateway.log").open("wb")
    process = subprocess.Popen(
        [
            PUSHGATEWAY,
            f"--web.listen-address=127.0.0.1:{port}",
            # Debian builds it with a persistence file under /var/lib: keep each test apart
            f"--persistence.file={tmp_path / 'pushgateway.data'}",
        ],
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            urllib.request.urlopen(url + "/-/ready", timeout=1).close()
        except OSError:
            return False
        return True

    try:
        wait_until(ready, 20, message="the pushgateway never became ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_textfile_and_pushgateway_carry_the_same_series(
    etcd35: EtcdCluster, pushgateway: str, tmp_path: Path
) -> None:
    load_kubernetes_like_keys(etcd35, count=50)
    config = write_config(tmp_path, etcd35.endpoints[:1])
    textfile = tmp_path / "textfile" / "etcd_backup.prom"
    textfile.parent.mkdir()
    result = run_cli(
        "once", "-c", str(config), "--textfile", str(textfile), "--pushgateway", pushgateway
    )
    assert result.returncode == 0, result.stderr
    written = series(textfile.read_text())
    pushed = series(urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode())
    assert written[("etcd_backup_runs_total", (("result", "success"),))] == 1
    assert written[("etcd_backup_destination_snapshots", (("destination", "local"),))] == 1
    assert 0 <= written[("etcd_backup_last_success_age_seconds", ())] < 60
    # the age is computed at export time; every other series must be identical
    age = ("etcd_backup_last_success_age_seconds", ())
    assert {k: v for k, v in written.items() if k != age} == {
        k: v for k, v in pushed.items() if k != age and k in written
    }
    assert set(written) <= set(pushed)
    pushed_text = urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode()
    manifest = next((tmp_path / "backups").glob("*.manifest.json")).read_text()
    cluster_id = manifest.split('"cluster_id": "')[1].split('"')[0]
    assert f'cluster_id="{cluster_id}"' in pushed_text


def run_once(config: Path, textfile: Path, pushgateway: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "once", "-c", str(config), "--textfile", str(textfile), "--pushgateway", pushgateway
    )


def endpoint_config(directory: Path, endpoint: str) -> Path:
    """A host reading one endpoint, that gives up on it within a second."""
    return write_config(directory, [endpoint], etcd={"dial_timeout": 1.0})


def labelled(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_host_that_never_backed_up_pages_until_its_first_backup(
    etcd35: EtcdCluster, pushgateway: str, tmp_path: Path
) -> None:
    textfile = tmp_path / "etcd_backup.prom"
    # day one: a wrong endpoint; etcd-backupd knows neither its cluster nor any backup
    wrong = endpoint_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    assert run_once(wrong, textfile, pushgateway).returncode != 0
    written = labelled(textfile.read_text())
    assert all(dict(labels)["cluster_id"] == "unknown" for _, labels in written)
    unknown = frozenset({("cluster_id", "unknown")})
    assert written[("etcd_backup_last_success_timestamp_seconds", unknown)] == 0
    assert written[("etcd_backup_info", unknown | {("version", __version__)})] == 1
    assert written[("etcd_backup_failures_total", unknown | {("stage", "snapshot")})] == 1
    host = socket.gethostname()
    pushed = urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode()
    assert f'push_time_seconds{{cluster_id="unknown",instance="{host}",job="etcd-backupd"}}' in (
        pushed
    )
    # fixed: the host reports its cluster, and its report from before is gone
    fixed = endpoint_config(tmp_path, etcd35.endpoints[0])
    assert run_once(fixed, textfile, pushgateway).returncode == 0
    cluster_id = next((tmp_path / "backups").glob("*.manifest.json")).read_text()
    cluster_id = cluster_id.split('"cluster_id": "')[1].split('"')[0]
    pushed = urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode()
    assert f'push_time_seconds{{cluster_id="{cluster_id}",instance="{host}"' in pushed
    assert 'cluster_id="unknown"' not in pushed


def test_the_alert_rule_tests_feed_series_as_once_writes_them(
    etcd35: EtcdCluster, pushgateway: str, tmp_path: Path
) -> None:
    """Every input series of the promtool tests has a name and label names that `once
    --textfile` (as node_exporter or a /metrics scrape adds job and instance) or `once
    --pushgateway` (as scraped from the pushgateway) really produce."""
    load_kubernetes_like_keys(etcd35, count=20)
    textfile = tmp_path / "etcd_backup.prom"
    assert (
        run_once(endpoint_config(tmp_path, etcd35.endpoints[0]), textfile, pushgateway).returncode
        == 0
    )
    written = labelled(textfile.read_text())
    pushed = labelled(urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode())
    manifest = Manifest.from_json(next((tmp_path / "backups").glob("*.manifest.json")).read_text())
    cluster = frozenset({("cluster_id", manifest.cluster_id)})
    # the default schedule, every 12 hours; the keys a restore would hold
    assert written[("etcd_backup_schedule_interval_seconds", cluster)] == 12 * 3600
    assert written[("etcd_backup_last_live_keys", cluster)] == manifest.live_keys
    # drills run in the daemon only: its /metrics after one
    daemon = BackupMetrics(CollectorRegistry())
    daemon.observe_drill("local", False, 1.0)
    served = labelled(generate_latest(daemon.exposition).decode())
    shapes = {
        (name, frozenset(dict(labels)) | {"job", "instance"})
        for name, labels in [*written, *served]
    }
    shapes |= {(name, frozenset(dict(labels))) for name, labels in pushed}
    values: dict[str, set[str]] = {}
    for _, labels in [*written, *pushed]:
        for key, value in labels:
            values.setdefault(key, set()).add(value)
    tests = yaml.safe_load((RULES / "etcd-backupd.rules.test.yml").read_text())["tests"]
    fed = [s["series"] for t in tests for s in t["input_series"]]
    assert len(fed) > 50
    for series in fed:
        sample = next(s for f in text_string_to_metric_families(series + " 1\n") for s in f.samples)
        assert (sample.name, frozenset(sample.labels)) in shapes, series
        for key in ("stage", "result", "role"):
            if key in sample.labels:
                assert sample.labels[key] in values[key], series
    rules = (RULES / "etcd-backupd.rules.yml").read_text()
    used = set(re.findall(r"\b(?:etcd_backup_\w+|push_time_seconds)\b", rules))
    assert used <= {name for name, _ in shapes}


def test_prometheus_evaluates_every_rule_on_two_clusters_pushed_from_one_host(
    etcd35: EtcdCluster, etcd34: EtcdCluster, pushgateway: str, tmp_path: Path
) -> None:
    """What an operator's Prometheus does with the shipped rules when one host pushes two
    clusters and a third config that reaches no etcd: no rule fails to evaluate (a join on
    (instance, job) did, with "many-to-many matching not allowed"), each cluster has its own
    figures, and only the host without a backup is an alert."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not installed (Debian prometheus)")
    textfile = tmp_path / "etcd_backup.prom"
    for name, endpoint in (
        ("a", etcd35.endpoints[0]),
        ("b", etcd34.endpoints[0]),
        ("wrong", f"http://127.0.0.1:{free_port()}"),
    ):
        (tmp_path / name).mkdir()
        run_once(endpoint_config(tmp_path / name, endpoint), textfile, pushgateway)
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{str(RULES / 'etcd-backupd.rules.yml')!r}]\n"
        "scrape_configs:\n- job_name: pushgateway\n  honor_labels: true\n"
        f"  static_configs: [{{targets: [{pushgateway.removeprefix('http://')!r}]}}]\n"
    )
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    api = f"http://127.0.0.1:{web}/api/v1/"

    def get(path: str) -> Any:
        return json.loads(urllib.request.urlopen(api + path, timeout=5).read())["data"]

    def query(expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        found = get("query?query=" + urllib.parse.quote(expr))["result"]
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in found}

    def evaluated() -> bool:
        try:
            rules = [r for g in get("rules")["groups"] for r in g["rules"]]
            return bool(query("etcd_backup_info")) and rules[0].get(
                "lastEvaluation", ""
            ).startswith("20")
        except OSError:
            return False

    try:
        wait_until(
            evaluated,
            60,
            interval=0.5,
            message=lambda: (tmp_path / "prometheus.log").read_text(),
        )
        time.sleep(2)  # one more evaluation, on the scraped series
        rules = [r for g in get("rules")["groups"] for r in g["rules"]]
        shipped = yaml.safe_load((RULES / "etcd-backupd.rules.yml").read_text())["groups"]
        assert [r["name"] for r in rules] == [r["alert"] for g in shipped for r in g["rules"]]
        assert all(r["health"] == "ok" for r in rules), [
            (r["name"], r.get("lastError")) for r in rules
        ]
        newest = query("max by (cluster_id) (etcd_backup_last_success_timestamp_seconds)")
        ids = {dict(labels)["cluster_id"]: value for labels, value in newest.items()}
        assert len(ids) == 3 and ids.pop("unknown") == 0
        assert all(value > time.time() - 600 for value in ids.values())
        host = socket.gethostname()
        states = {r["name"]: r["state"] for r in rules}
        assert states["EtcdBackupNeverSucceeded"] == "pending", states
        assert {s for n, s in states.items() if n != "EtcdBackupNeverSucceeded"} == {"inactive"}
        never = next(r for r in rules if r["name"] == "EtcdBackupNeverSucceeded")
        assert [a["labels"] for a in never["alerts"]] == [
            {
                "alertname": "EtcdBackupNeverSucceeded",
                "cluster_id": "unknown",
                "instance": host,
                "severity": "critical",
            }
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_hosts_of_one_cluster_push_into_groups_of_their_own(pushgateway: str) -> None:
    """A standby's zeros, pushed after the active host's failure, leave that failure standing."""
    for host, role in (("etcd1", "active"), ("etcd2", "standby"), ("etcd3", "standby")):
        metrics = BackupMetrics(CollectorRegistry())
        metrics.set_cluster("00000000000000ab")
        metrics.set_role(role)
        if role == "active":
            metrics.failures.labels("snapshot").inc()
        push(metrics, pushgateway, host)
    pushed = labelled(urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode())
    failures = {
        dict(labels)["instance"]: value
        for (name, labels), value in pushed.items()
        if name == "etcd_backup_failures_total" and ("stage", "snapshot") in labels
    }
    assert failures == {"etcd1": 1, "etcd2": 0, "etcd3": 0}
    clusters = {dict(labels)["cluster_id"] for (name, labels) in pushed if name.startswith("etcd_")}
    assert clusters == {"00000000000000ab"}
