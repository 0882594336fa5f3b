"""`etcd-backupd keygen`: an identity age-keygen would write, and its recipient on stdout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from etcd_backupd.cli import main as cli_main

pytestmark = pytest.mark.skipif(
    shutil.which("age") is None or shutil.which("age-keygen") is None,
    reason="age not installed (Debian age)",
)


def test_keygen_writes_an_identity_age_reads_and_prints_its_recipient(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new.txt"
    assert cli_main(["keygen", "--output", str(path)]) == 0
    recipient = capsys.readouterr().out.strip()
    assert path.stat().st_mode & 0o777 == 0o600
    assert (
        subprocess.run(
            ["age-keygen", "-y", str(path)], capture_output=True, text=True, check=True
        ).stdout.strip()
        == recipient
    )
    # age encrypts to the printed recipient, and the file decrypts it
    sealed = subprocess.run(
        ["age", "-r", recipient], input=b"secret", capture_output=True, check=True
    ).stdout
    opened = subprocess.run(
        ["age", "-d", "-i", str(path)], input=sealed, capture_output=True, check=True
    )
    assert opened.stdout == b"secret"
    before = path.read_bytes()
    assert cli_main(["keygen", "--output", str(path)]) == 1
    assert "exists" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_keygen_without_output_writes_the_identity_to_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(["keygen"]) == 0
    captured = capsys.readouterr()
    assert "AGE-SECRET-KEY-1" in captured.out
    recipient = captured.err.removeprefix("Public key: ").strip()
    assert recipient.startswith("age1")
    assert f"# public key: {recipient}\n" in captured.out
