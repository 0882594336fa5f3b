"""`make demo`: a throwaway etcd on loopback, one backup cycle into ./demo-backups, the result,
then the service: `etcd-backupd run` on a per-minute schedule for one fire, `status` and its
`/metrics`.

Shows what an operator sees: the cycle's log, `list` and `verify` of the new backup, the
daemon's log of its scheduled backup, `status` and an excerpt of the metrics. The etcd member
lives in a temporary directory; it and the daemon are stopped at the end, whatever happens.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness.etcd import (  # noqa: E402 - the harness lives with the tests
    find_binaries,
    free_port,
    load_kubernetes_like_keys,
    start_cluster,
    stop_process,
)

BACKUPS = REPO / "demo-backups"
# what the excerpt of /metrics shows: how old and how large the newest backup is
METRICS_SHOWN = (
    "etcd_backup_last_success_age_seconds",
    "etcd_backup_last_size_bytes",
    "etcd_backup_destination_snapshots",
    "etcd_backup_runs_total",
)


def run(*args: str) -> None:
    command = [sys.executable, "-m", "etcd_backupd.cli", *args]
    print(f"\n$ etcd-backupd {' '.join(args)}", flush=True)
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo: 'etcd-backupd {args[0]}' exited {result.returncode}")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


def succeeded_runs(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("etcd_backup_runs_total{") and 'result="success"' in line:
            return float(line.split()[-1])
    return 0.0


def service(config: Path, port: int) -> None:
    """`etcd-backupd run` until its first scheduled backup is done, then `status` and /metrics."""
    url = f"http://127.0.0.1:{port}/metrics"
    command = [sys.executable, "-m", "etcd_backupd.cli", "run", "--config", str(config)]
    now = datetime.now(UTC)
    fire = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    print(f"\n$ etcd-backupd run --config {config} &", flush=True)
    print(f'(schedule "* * * * *": the next fire is {fire:%H:%M:%S}Z, in {(fire - now).seconds} s)')
    daemon = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + (fire - now).total_seconds() + 45
        while True:
            if daemon.poll() is not None:
                raise SystemExit(f"demo: 'etcd-backupd run' exited {daemon.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit("demo: the scheduled backup did not finish in time")
            try:
                if succeeded_runs(scrape(url)) >= 1:
                    break
            except OSError:
                pass  # not serving yet
            time.sleep(0.5)
        run("status", "--config", str(config))
        print(f"\n$ curl -s {url} | grep -E '{'|'.join(METRICS_SHOWN)}'", flush=True)
        for line in scrape(url).splitlines():
            if line.startswith(METRICS_SHOWN):
                print(line)
    finally:
        print("\nstopping the service (SIGTERM) ...", flush=True)
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_process(daemon, timeout=5)


def main() -> None:
    binaries = find_binaries("3.5")
    if binaries is None:
        raise SystemExit("demo: etcd 3.5 binaries not found; run 'make demo' to install them")
    with tempfile.TemporaryDirectory(prefix="etcd-backupd-demo-") as workdir:
        work = Path(workdir)
        print(f"starting a throwaway etcd {binaries.version} on loopback ...", flush=True)
        cluster = start_cluster(binaries, work / "etcd")
        try:
            keys = load_kubernetes_like_keys(cluster, count=300)
            print(f"etcd at {cluster.endpoints[0]} holds {len(keys)} Kubernetes-like keys")
            config = work / "config.toml"
            config.write_text(
                f"state_dir = {str(work / 'state')!r}\n"
                "[etcd]\n"
                f"endpoints = [{cluster.endpoints[0]!r}]\n"
                'cluster_name = "demo"\n'
                "[[destination]]\n"
                'name = "local"\n'
                'type = "local"\n'
                f"path = {str(BACKUPS)!r}\n"
            )
            run("once", "--config", str(config))
            run("list", "--config", str(config))
            newest = sorted(BACKUPS.glob("etcd-snapshot-demo-*.db"))[-1]
            run("verify", str(newest))
            port = free_port()
            with config.open("a") as settings:
                settings.write(
                    '[schedule]\ncron = "* * * * *"\ncatch_up = false\n'
                    f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
                )
            service(config, port)
        finally:
            cluster.stop()
            print("\nthrowaway etcd stopped; backups are in", BACKUPS)


if __name__ == "__main__":
    main()
