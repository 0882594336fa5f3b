"""The --textfile output is for node_exporter, which runs as another user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from etcd_backupd.metrics import BackupMetrics, write_textfile


def test_textfile_is_world_readable_under_the_units_umask(tmp_path: Path) -> None:
    path = tmp_path / "etcd_backup.prom"
    previous = os.umask(0o077)  # the units' UMask=0077
    try:
        write_textfile(BackupMetrics(CollectorRegistry()), path)
        path.chmod(0o600)
        write_textfile(BackupMetrics(CollectorRegistry()), path)  # replaces, mode set again
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["etcd_backup.prom"]
    names = {family.name for family in text_string_to_metric_families(path.read_text())}
    assert "etcd_backup_last_success_age_seconds" in names
