"""Reporting: every observer told of every event in order, held backups listed only for the
metrics, and a one-shot job's export after everything else was recorded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from etcd_backupd.config import Config, parse_config
from etcd_backupd.coordination import Role
from etcd_backupd.cycle import CycleResult
from etcd_backupd.drill import DrillResult
from etcd_backupd.errors import DestinationBusy
from etcd_backupd.manifest import Cluster, Manifest
from etcd_backupd.metrics import BackupMetrics
from etcd_backupd.reporting import ExportObserver, MetricsObserver, Observer, Reporting
from tests.harness.backups import plant_local

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class Recorder(Observer):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def on_cluster(self, cluster: Cluster) -> None:
        self.log.append(f"{self.name} cluster {cluster.name}")

    def on_plan(self, role: Role, reason: str) -> None:
        self.log.append(f"{self.name} plan {role}")

    def on_start(self, destinations: Sequence[str]) -> None:
        self.log.append(f"{self.name} start {','.join(destinations)}")

    def on_result(self, result: CycleResult) -> None:
        self.log.append(f"{self.name} result {result.ok}")

    def on_skipped(self) -> None:
        self.log.append(f"{self.name} skipped")

    def on_held(self, held: Mapping[str, Sequence[Manifest]]) -> None:
        self.log.append(f"{self.name} held {sorted((k, len(v)) for k, v in held.items())}")

    def on_drill(self, result: DrillResult) -> None:
        self.log.append(f"{self.name} drill {result.destination}")

    def on_close(self) -> None:
        self.log.append(f"{self.name} close")


def config(tmp_path: Path) -> Config:
    return parse_config(
        {
            # no etcd answers: the backups named for cluster_name count
            "etcd": {
                "endpoints": ["http://127.0.0.1:9"],
                "dial_timeout": 0.2,
                "cluster_name": "prod",
            },
            "destination": [
                {"name": "disk", "type": "local", "path": str(tmp_path / "disk")},
                {"name": "nas", "type": "local", "path": str(tmp_path / "nas")},
            ],
        }
    )


def failed() -> CycleResult:
    return CycleResult(NOW, NOW + timedelta(seconds=1), False, error="x", failed_stage="snapshot")


def test_every_observer_hears_every_event_in_order(tmp_path: Path) -> None:
    (tmp_path / "disk").mkdir()
    (tmp_path / "nas").mkdir()
    plant_local(tmp_path / "disk", "prod", NOW - timedelta(hours=1))
    log: list[str] = []
    metrics = BackupMetrics(CollectorRegistry())
    reporting = Reporting(
        config(tmp_path), [Recorder("a", log), Recorder("b", log)], metrics=metrics
    )
    reporting.planned("active", "coordination is off")
    reporting.cycle_started(["disk"])
    reporting.cycle_finished(failed(), ["disk"])
    reporting.skipped()
    reporting.drilled(DrillResult("disk", "", False, 0.0, "no tools"))
    reporting.close()
    assert log == [
        "a plan active",
        "b plan active",
        "a start disk",
        "b start disk",
        "a result False",
        "b result False",
        # nothing was listed yet: every destination is, not only the one backed up to
        "a cluster prod",
        "b cluster prod",
        "a held [('disk', 1), ('nas', 0)]",
        "b held [('disk', 1), ('nas', 0)]",
        "a skipped",
        "b skipped",
        "a drill disk",
        "b drill disk",
        "a close",
        "b close",
    ]


def test_after_a_full_listing_a_cycle_relists_its_own_destinations_only(tmp_path: Path) -> None:
    log: list[str] = []
    reporting = Reporting(
        config(tmp_path), [Recorder("a", log)], metrics=BackupMetrics(CollectorRegistry())
    )
    reporting.cluster = Cluster("prod")
    reporting.refresh()
    reporting.cycle_finished(failed(), ["nas"])
    held = [line for line in log if " held " in line]
    assert held == ["a held [('disk', 0), ('nas', 0)]", "a held [('nas', 0)]"]


def test_without_metrics_nothing_is_listed(tmp_path: Path) -> None:
    log: list[str] = []
    reporting = Reporting(config(tmp_path), [Recorder("a", log)])
    reporting.planned("standby", "another host backed up this fire time")
    reporting.cycle_finished(failed(), ["disk"])
    assert log == ["a plan standby", "a result False"]


def test_a_busy_destination_counts_as_skipped_not_failed() -> None:
    metrics = BackupMetrics(CollectorRegistry())
    busy = CycleResult(NOW, NOW, False, error="busy", exit_code=DestinationBusy.exit_code)
    MetricsObserver(metrics).on_result(busy)
    registry = metrics.registry
    assert registry.get_sample_value("etcd_backup_runs_total", {"result": "skipped"}) == 1
    assert registry.get_sample_value("etcd_backup_runs_total", {"result": "failure"}) == 0


def test_the_export_comes_last_and_a_failure_never_raises(tmp_path: Path) -> None:
    metrics = BackupMetrics(CollectorRegistry())
    textfile = tmp_path / "etcd_backup.prom"
    reporting = Reporting(
        config(tmp_path),
        [MetricsObserver(metrics), ExportObserver(metrics, "h", textfile, None)],
        metrics=metrics,
    )
    reporting.planned("standby", "another host backed up this fire time")
    assert not textfile.exists()
    reporting.close()
    assert 'etcd_backup_role{cluster_id="unknown",role="standby"} 1.0' in textfile.read_text()
    ExportObserver(metrics, "h", tmp_path / "missing" / "x.prom", None).on_close()
