"""`make demo`: a throwaway etcd on loopback, one backup cycle into ./demo-backups, the result.

Shows what an operator sees: the cycle's log, `list` and `verify` of the new backup. The etcd
member lives in a temporary directory and is stopped at the end, whatever happens.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness.etcd import (  # noqa: E402 - the harness lives with the tests
    find_binaries,
    load_kubernetes_like_keys,
    start_cluster,
)

BACKUPS = REPO / "demo-backups"


def run(*args: str) -> None:
    command = [sys.executable, "-m", "etcd_backupd.cli", *args]
    print(f"\n$ etcd-backupd {' '.join(args)}", flush=True)
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo: 'etcd-backupd {args[0]}' exited {result.returncode}")


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
        finally:
            cluster.stop()
            print("\nthrowaway etcd stopped; backups are in", BACKUPS)


if __name__ == "__main__":
    main()
