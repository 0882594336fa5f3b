"""What the tool creates on disk is its owner's alone, whatever the umask, and it never writes
through a symlink planted where it creates a file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcd_backupd.cli import main as cli_main
from etcd_backupd.config_destinations import LocalDestination
from etcd_backupd.daemon import StateLock
from etcd_backupd.destinations.local import LocalDirectory
from etcd_backupd.errors import BackupError
from etcd_backupd.fsutil import atomic_write_bytes, create_new
from etcd_backupd.spool import choose_spool_dir


@pytest.fixture
def umask_000() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_state_dir_and_its_new_parents_are_0700_under_umask_000(
    tmp_path: Path, umask_000: None
) -> None:
    existing = tmp_path / "var"
    existing.mkdir()
    existing.chmod(0o751)
    state_dir = existing / "lib" / "etcd-backupd"
    lock = StateLock(state_dir)
    try:
        assert mode(existing / "lib") == mode(state_dir) == 0o700
        assert mode(state_dir / "etcd-backupd.lock") == 0o600
        assert mode(existing) == 0o751
    finally:
        lock.release()


def test_spool_and_local_destination_dirs_are_0700_under_umask_000(
    tmp_path: Path, umask_000: None
) -> None:
    spool, owner = choose_spool_dir([], tmp_path / "state" / "spool")
    assert owner is None
    assert mode(tmp_path / "state") == mode(spool) == 0o700
    settings = LocalDestination(name="l", type="local", path=tmp_path / "mnt" / "backups" / "etcd")
    assert LocalDirectory(settings).spool_dir() == settings.path
    assert mode(tmp_path / "mnt") == mode(tmp_path / "mnt" / "backups") == 0o700
    assert mode(settings.path) == 0o700


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    lock = StateLock(tmp_path)
    lock.release()
    assert mode(tmp_path) == 0o755


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "etcd-backupd.lock").symlink_to(victim)
    with pytest.raises(BackupError) as caught:
        StateLock(state_dir)
    assert str(caught.value) == (
        f"state_dir: cannot create {state_dir / 'etcd-backupd.lock'}: it is a symlink"
    )
    assert victim.read_text() == "precious\n"


def test_a_lock_file_that_is_no_regular_file_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "etcd-backupd.lock")
    with pytest.raises(BackupError, match="is not a regular file"):
        StateLock(tmp_path)


def test_atomic_writes_never_follow_a_planted_part_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    planted = tmp_path / "m.json.part"
    planted.symlink_to(victim)
    atomic_write_bytes(tmp_path / "m.json", b"{}")
    assert victim.read_text() == "precious\n"
    assert planted.is_symlink()
    assert (tmp_path / "m.json").read_bytes() == b"{}"
    with pytest.raises(FileExistsError):
        create_new(planted)
    assert victim.read_text() == "precious\n"


def test_restore_plan_scripts_are_never_written_through_a_symlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    (tmp_path / "restore-etcd1.sh").symlink_to(victim)
    member = ["--member", "etcd1=https://10.0.0.1:2380"]
    args = ["restore-plan", *member, "--snapshot", "/s.db", "--output", "script"]
    assert cli_main([*args, "--script-dir", str(tmp_path)]) == BackupError.exit_code
    assert capsys.readouterr().err == (
        f"etcd-backupd: cannot write {tmp_path / 'restore-etcd1.sh'}: it is a symlink\n"
    )
    assert victim.read_text() == "precious\n" and mode(victim) == 0o600
    assert cli_main([*args, "--script-dir", str(tmp_path / "scripts")]) == 0
    assert mode(tmp_path / "scripts" / "restore-etcd1.sh") == 0o755
