"""Reading a local destination that someone else may have written: links are not followed,
nothing is written outside the directory the caller named, nothing existing is overwritten."""

from __future__ import annotations

import errno
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etcd_backupd.config_destinations import LocalDestination
from etcd_backupd.destinations.local import LocalDirectory
from etcd_backupd.errors import DestinationError, SnapshotInvalid
from etcd_backupd.fsutil import inside
from etcd_backupd.manifest import snapshot_name

NAME = snapshot_name("prod", datetime(2026, 11, 24, 12, 0, tzinfo=UTC))


def destination(path: Path) -> LocalDirectory:
    path.mkdir(exist_ok=True)
    return LocalDirectory(LocalDestination(type="local", name="local", path=path))


def test_a_snapshot_that_is_a_link_is_not_fetched(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:x")
    store = destination(tmp_path / "backups")
    (store.path / NAME).symlink_to(secret)
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    with pytest.raises(DestinationError, match="not a regular file"):
        store.fetch(NAME, scratch / NAME)

    assert list(scratch.iterdir()) == []


def test_fetch_never_overwrites_what_is_there(tmp_path: Path) -> None:
    store = destination(tmp_path / "backups")
    (store.path / NAME).write_bytes(b"snapshot")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "scratch").mkdir()
    planted = tmp_path / "scratch" / NAME
    planted.symlink_to(victim)

    with pytest.raises(DestinationError):
        store.fetch(NAME, planted)

    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("name", ["../victim", "/etc/passwd", "a/b", "..", "", "."])
def test_names_from_a_destination_stay_inside(tmp_path: Path, name: str) -> None:
    with pytest.raises(DestinationError):
        inside(tmp_path, name)


def test_a_link_inside_that_leads_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").symlink_to("/etc/passwd")
    with pytest.raises(DestinationError, match="leads out"):
        inside(tmp_path, "out")
    assert inside(tmp_path, NAME) == tmp_path / NAME


@pytest.mark.parametrize("linked", [True, False], ids=["linked", "copied"])
def test_a_fetch_checks_the_stored_sha256_and_leaves_no_file_on_a_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked: bool
) -> None:
    store = destination(tmp_path / "backups")
    (store.path / NAME).write_bytes(b"stored bytes")
    if not linked:

        def cross_device(*args: object, **kwargs: object) -> None:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "link", cross_device)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    recorded = hashlib.sha256(b"stored bytes").hexdigest()

    fetched = store.fetch(NAME, scratch / NAME, stored_sha256=recorded)
    assert fetched.read_bytes() == b"stored bytes"
    fetched.unlink()
    with pytest.raises(SnapshotInvalid, match="does not match its manifest"):
        store.fetch(NAME, scratch / NAME, stored_sha256=hashlib.sha256(b"other").hexdigest())
    assert list(scratch.iterdir()) == []
