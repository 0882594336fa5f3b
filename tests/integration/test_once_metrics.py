"""`once --textfile` and `once --pushgateway`: a CronJob or timer alerts like the daemon does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.etcd import EtcdCluster, free_port, load_kubernetes_like_keys

PUSHGATEWAY = shutil.which("prometheus-pushgateway")


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
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(url + "/-/ready", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_textfile_and_pushgateway_carry_the_same_series(
    etcd35: EtcdCluster, pushgateway: str, tmp_path: Path
) -> None:
    load_kubernetes_like_keys(etcd35, count=50)
    config = tmp_path / "config.toml"
    config.write_text(
        f"state_dir = {str(tmp_path / 'state')!r}\n"
        f"[etcd]\nendpoints = [{etcd35.endpoints[0]!r}]\n"
        "[[destination]]\nname = 'local'\ntype = 'local'\n"
        f"path = {str(tmp_path / 'backups')!r}\n"
    )
    textfile = tmp_path / "textfile" / "etcd_backup.prom"
    textfile.parent.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "etcd_backupd.cli", "once", "-c", str(config),
         "--textfile", str(textfile), "--pushgateway", pushgateway],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ},
    )  # fmt: skip
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
