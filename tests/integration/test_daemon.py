"""`etcd-backupd run` against real etcd members: schedules, catch-up, retries, signals, the lock,
sd_notify and metrics that survive a restart."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from etcd_backupd.config import parse_config
from etcd_backupd.daemon import Daemon, Schedule
from tests.harness.cli import Running, run_cli, write_config
from tests.harness.etcd import (
    EtcdCluster,
    free_port,
    load_kubernetes_like_keys,
    load_large_values,
)
from tests.harness.polling import wait_until


def daemon_config(tmp_path: Path, cluster: EtcdCluster, port: int, **schedule: object) -> Path:
    return write_config(
        tmp_path,
        cluster,
        etcd={"dial_timeout": 2.0},
        schedule={"cron": "* * * * *", "retry_backoff": 1.0, **schedule},
        metrics={"listen": f"127.0.0.1:{port}"},
    )


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(config: Path, env: dict[str, str] | None = None) -> Running:
        running = Running(config, tmp_path / f"daemon{len(started)}.log", env)
        started.append(running)
        return running

    yield start
    for running in started:
        running.kill()


def scrape(port: int, path: str = "/metrics") -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read().decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def backups(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "backups").glob("*.db"))


def test_catches_up_serves_metrics_reloads_and_stops(
    etcd35: EtcdCluster, tmp_path: Path, daemon: Callable[..., Running]
) -> None:
    load_kubernetes_like_keys(etcd35, count=40)
    port = free_port()
    config = daemon_config(tmp_path, etcd35, port)
    running = daemon(config)
    running.wait_for("destination local: stored")
    assert "catching up" in running.text()
    assert scrape(port, "/healthz") == "ok\n"
    assert scrape(port, "/readyz") == "ok\n"
    before = scrape(port)
    assert metric(before, "etcd_backup_runs_total") == 1
    assert metric(before, "etcd_backup_last_size_bytes") > 0
    assert metric(before, "etcd_backup_next_run_timestamp_seconds") > time.time()
    # every series names the cluster; staleness scales with the per-minute schedule
    series = [line for line in before.splitlines() if line.startswith("etcd_backup_")]
    assert series and all('cluster_id="' in line for line in series)
    assert 'cluster_id="unknown"' not in before
    assert metric(before, "etcd_backup_schedule_interval_seconds") == 60

    second = run_cli("run", "--config", str(config), timeout=30)
    assert second.returncode == 75
    assert "already runs with state_dir" in second.stderr

    config.write_text(config.read_text().replace("[schedule]", "[schedule]\nbogus = 1"))
    running.process.send_signal(signal.SIGHUP)
    running.wait_for("reload refused, keeping the running config")
    assert scrape(port, "/healthz") == "ok\n"
    config.write_text(config.read_text().replace("bogus = 1\n", ""))
    running.process.send_signal(signal.SIGHUP)
    running.wait_for("config reloaded")

    # a per-minute fire may have added a backup since `before`: compare with the last scrape
    last = scrape(port)
    assert running.stop() == 0
    stored = backups(tmp_path)
    # a restart reads the same last backup from the destination, not "no backup ever"
    restarted = daemon(daemon_config(tmp_path, etcd35, port, catch_up=False, cron="0 0 1 1 *"))
    restarted.wait_for("scheduled; next backup")

    # the destinations are read after READY, by the start-up thread
    def loaded() -> str | None:
        text = scrape(port)
        return text if metric(text, "etcd_backup_last_success_timestamp_seconds") != 0 else None

    after = wait_until(
        loaded, 20, interval=0.2, message="the restarted daemon never loaded its backups"
    )
    for name in (
        "etcd_backup_last_success_timestamp_seconds",
        "etcd_backup_last_size_bytes",
        "etcd_backup_last_revision",
        "etcd_backup_last_keys",
    ):
        assert metric(after, name) == metric(last, name), name
    assert restarted.stop() == 0
    assert backups(tmp_path) == stored


@pytest.mark.slow
def test_fires_on_the_minute(
    etcd35: EtcdCluster, tmp_path: Path, daemon: Callable[..., Running]
) -> None:
    port = free_port()
    running = daemon(daemon_config(tmp_path, etcd35, port, catch_up=False))
    running.wait_for("scheduled; next backup")
    wait_until(lambda: backups(tmp_path), 75, interval=0.5, message="no backup on the minute")
    assert len(backups(tmp_path)) == 1
    assert "catching up" not in running.text()
    assert running.stop() == 0


def test_retries_until_etcd_comes_back(
    etcd35: EtcdCluster, tmp_path: Path, daemon: Callable[..., Running]
) -> None:
    member = etcd35.members[0]
    member.stop()
    port = free_port()
    running = daemon(daemon_config(tmp_path, etcd35, port, retry_attempts=5, retry_backoff=2.0))
    running.wait_for("backup failed; retry 1 of 5")
    # etcd was down at start: the host does not know its cluster yet
    assert (
        metric(scrape(port), 'etcd_backup_failures_total{cluster_id="unknown",stage="snapshot"}')
        >= 1
    )
    member.start()
    etcd35.wait_healthy()
    running.wait_for("destination local: stored", timeout=60)

    # the cycle logs "stored" before its result reaches the metrics: wait for the success
    def after_success() -> str | None:
        page = scrape(port)
        return page if 'result="success"' in page else None

    text = wait_until(
        after_success,
        10,
        message="no successful run in the metrics after the backup was stored",
    )
    found = re.search(r'etcd_backup_info\{cluster_id="([0-9a-f]{16})"', text)
    assert found is not None
    assert f'etcd_backup_runs_total{{cluster_id="{found[1]}",result="failure"}}' in text
    assert metric(text, f'etcd_backup_runs_total{{cluster_id="{found[1]}",result="success"}}') == 1
    assert running.stop() == 0


def test_sigterm_mid_cycle_aborts_cleanly(
    etcd35: EtcdCluster, tmp_path: Path, daemon: Callable[..., Running]
) -> None:
    load_large_values(etcd35, 200)
    port = free_port()
    running = daemon(daemon_config(tmp_path, etcd35, port, shutdown_timeout=0.0))
    running.wait_for("streaming snapshot from")
    assert running.stop() == 0
    assert "aborting it cleanly" in running.text()
    assert "backup cancelled" in running.text()
    assert list((tmp_path / "backups").iterdir()) == []


def test_notifies_systemd(
    etcd35: EtcdCluster, tmp_path: Path, daemon: Callable[..., Running]
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        port = free_port()
        running = daemon(
            daemon_config(tmp_path, etcd35, port),
            env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"},
        )
        messages: list[str] = []

        def told_all() -> bool:
            messages.append(sock.recv(4096).decode())
            return all(
                any(told in m for m in messages)
                for told in ("READY=1", "WATCHDOG=1", "STATUS=last backup")
            )

        # each receive waits for the next message, up to the socket's timeout
        wait_until(told_all, 30, interval=0, message=lambda: repr(messages))
        assert running.stop() == 0
    assert any("READY=1" in m for m in messages)
    assert any("WATCHDOG=1" in m for m in messages)
    assert any("STATUS=last backup" in m and "ok" in m for m in messages)


def test_overlapping_fire_is_skipped_and_counted(etcd35: EtcdCluster, tmp_path: Path) -> None:
    config = parse_config(
        {
            "state_dir": str(tmp_path / "state"),
            "etcd": {"endpoints": etcd35.endpoints},
            "destination": [{"name": "local", "type": "local", "path": str(tmp_path / "b")}],
        }
    )
    running = Daemon(tmp_path / "config.toml", config)
    running.metrics = type(running.metrics)(CollectorRegistry())
    with running._cycle_lock:
        assert running._cycle(["local"]) is None
    skipped = running.metrics.registry.get_sample_value(
        "etcd_backup_runs_total", {"result": "skipped"}
    )
    assert skipped == 1
    result = running._cycle(["local"])
    assert result is not None and result.ok


def test_each_destination_follows_its_own_schedule(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    config = parse_config(
        {
            "schedule": {"cron": "0 */12 * * *"},
            "destination": [
                {"name": "disk", "type": "local", "path": "/x", "cron": "0 * * * *"},
                {"name": "s3", "type": "s3", "bucket": "bkt", "cron": "30 2 * * *"},
                {"name": "nfs", "type": "local", "path": "/y"},
            ],
        }
    )
    schedule = Schedule.of(config)
    assert schedule.due(datetime(2026, 11, 24, 12, 0, 7, tzinfo=UTC)) == ["disk", "nfs"]
    assert schedule.due(datetime(2026, 11, 24, 13, 0, tzinfo=UTC)) == ["disk"]
    assert schedule.due(datetime(2026, 11, 24, 2, 30, tzinfo=UTC)) == ["s3"]
    assert schedule.previous_fire(datetime(2026, 11, 24, 13, 59, tzinfo=UTC)) == datetime(
        2026, 11, 24, 13, 0, tzinfo=UTC
    )


@pytest.mark.slow
def test_prometheus_alerts_on_a_stale_backup_and_resolves(
    etcd35: EtcdCluster, tmp_path: Path, daemon: Callable[..., Running]
) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not installed (Debian prometheus)")
    port = free_port()
    running = daemon(daemon_config(tmp_path, etcd35, port, retry_attempts=0))
    running.wait_for("destination local: stored")
    # the test's own thresholds: stale after 15 s, where production uses two periods
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n- name: test\n  rules:\n  - alert: EtcdBackupStale\n"
        "    expr: etcd_backup_last_success_age_seconds > 15\n    for: 2s\n"
    )
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{str(rules)!r}]\n"
        "scrape_configs:\n- job_name: etcd-backupd\n"
        f"  static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
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

    def alert_state() -> str | None:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/alerts", timeout=2)
        except OSError:
            return None
        alerts = json.loads(body.read())["data"]["alerts"]
        return alerts[0]["state"] if alerts else "inactive"

    def wait_state(wanted: set[str], timeout: float) -> str:
        seen: list[str | None] = []

        def reached() -> str | None:
            seen.append(alert_state())
            return seen[-1] if seen[-1] in wanted else None

        return wait_until(
            reached,
            timeout,
            interval=0.5,
            message=lambda: f"alert still {seen[-1]}, wanted {wanted}",
        )

    try:
        assert wait_state({"inactive"}, 30) == "inactive"
        assert wait_state({"pending", "firing"}, 40) in ("pending", "firing")
        assert wait_state({"firing"}, 20) == "firing"
        before = len(backups(tmp_path))
        # the next per-minute fire backs up again, and the alert resolves
        assert wait_state({"inactive"}, 75) == "inactive"
        assert len(backups(tmp_path)) > before
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert running.stop() == 0


def test_weekdays_and_days_fire_as_cron_reads_them(tmp_path: Path) -> None:
    """`0 3 * * 1` is Monday (not Tuesday), the drill's default
    `0 3 * * 0` is Sunday, and a restricted day of month OR a restricted weekday is enough."""
    from datetime import UTC, datetime

    config = parse_config(
        {
            "schedule": {"cron": "0 3 * * 1"},
            "destination": [
                {"name": "disk", "type": "local", "path": "/x"},
                {"name": "s3", "type": "s3", "bucket": "bkt", "cron": "0 0 1,15 * fri"},
            ],
        }
    )
    schedule = Schedule.of(config)
    saturday = datetime(2026, 11, 28, 12, tzinfo=UTC)
    assert schedule.triggers["disk"].get_next_fire_time(None, saturday) == datetime(
        2026, 11, 30, 3, tzinfo=UTC
    )
    # Tuesday the 1st by its day of month, Friday the 4th by its weekday
    assert schedule.due(datetime(2026, 12, 1, 0, 0, 5, tzinfo=UTC)) == ["s3"]
    assert schedule.due(datetime(2026, 12, 4, 0, 0, tzinfo=UTC)) == ["s3"]
    assert schedule.drill.get_next_fire_time(None, saturday) == datetime(
        2026, 11, 29, 3, tzinfo=UTC
    )


def idle_config(tmp_path: Path, port: int, cron: str) -> str:
    """A daemon that starts, serves and waits: etcd is never needed before the first fire."""
    return (
        f"state_dir = {str(tmp_path / 'state')!r}\n"
        f"[etcd]\nendpoints = ['http://127.0.0.1:{free_port()}']\ndial_timeout = 0.5\n"
        f"[schedule]\ncron = {cron!r}\ncatch_up = false\n"
        f"[metrics]\nlisten = '127.0.0.1:{port}'\n"
        f"[[destination]]\nname = 'local'\ntype = 'local'\n"
        f"path = {str(tmp_path / 'backups')!r}\n"
    )


@pytest.mark.parametrize(
    ("cron", "reason"),
    [
        ("5- * * * *", "minute field: '5-' is missing the end of its range"),
        ("0 0 31 2 *", "never fires"),
    ],
)
def test_run_refuses_a_schedule_it_cannot_run(tmp_path: Path, cron: str, reason: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(idle_config(tmp_path, free_port(), cron))
    result = run_cli("run", "--config", str(config), timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"At 'schedule.cron': {cron!r}: {reason}" in result.stderr
    assert "Traceback" not in result.stderr


def test_sighup_with_any_bad_config_keeps_the_daemon_serving(
    tmp_path: Path, daemon: Callable[..., Running]
) -> None:
    from datetime import UTC, datetime, timedelta

    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(idle_config(tmp_path, port, "0 0 1 1 *"))
    running = daemon(config)
    running.wait_for("scheduled; next backup")

    def reload_bytes(content: bytes, needle: str) -> None:
        seen = running.text().count(needle)
        config.write_bytes(content)
        running.process.send_signal(signal.SIGHUP)
        running.wait(
            lambda: running.text().count(needle) > seen,
            30,
            lambda: f"never logged {needle!r}:\n{running.text()}",
        )

    bad = [
        (idle_config(tmp_path, port, "5- * * * *"), "'5-' is missing the end of its range"),
        (idle_config(tmp_path, port, "0 0 31 2 *"), "'0 0 31 2 *': never fires"),
        ("[schedule\ncron = '0 0 * * 7'\n", "not valid TOML"),
        ("# caf\xe9\n", "invalid UTF-8 at byte 5"),
    ]
    for text, reason in bad:
        reload_bytes(text.encode("latin-1"), "reload refused, keeping the running config")
        assert reason in running.text().splitlines()[-1]
        assert scrape(port, "/healthz") == "ok\n"
        assert scrape(port, "/readyz") == "ok\n"

    # Sunday as 7 crashed `run` before; it is plain cron and now takes effect
    reload_bytes(idle_config(tmp_path, port, "0 0 * * 7").encode(), "config reloaded")
    today = datetime.now(UTC).date()
    sunday = today + timedelta(days=(6 - today.weekday()) % 7 or 7)
    next_run = metric(scrape(port), "etcd_backup_next_run_timestamp_seconds")
    assert next_run == datetime(sunday.year, sunday.month, sunday.day, tzinfo=UTC).timestamp()
    assert running.stop() == 0
