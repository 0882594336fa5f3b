"""One table of exit codes: every error maps to a member of it, and README lists every member."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import etcd_backupd
from etcd_backupd import cli
from etcd_backupd.commands import verify
from etcd_backupd.errors import BackupError, DestinationBusy, ExitCode

README = Path(__file__).resolve().parents[2] / "README.md"
# a clause of the paragraph starts with its code, or with the command it is for: "for `drill`, 6"
CLAUSE_CODE = re.compile(r"(?:^|;)\s*(?:for `[\w-]+`, )?(\d+) ")


def _readme_exit_codes() -> dict[int, str]:
    paragraphs = README.read_text(encoding="utf-8").split("\n\n")
    (paragraph,) = [p for p in paragraphs if p.startswith("Exit codes:")]
    body = " ".join(paragraph.removeprefix("Exit codes:").split())
    clauses = {}
    for match in CLAUSE_CODE.finditer(body):
        code = int(match.group(1))
        assert code not in clauses, f"README lists exit code {code} twice"
        end = body.find(";", match.end())
        clauses[code] = body[match.end() : end if end >= 0 else None]
    return clauses


def _error_classes() -> list[type[BackupError]]:
    for module in pkgutil.walk_packages(etcd_backupd.__path__, "etcd_backupd."):
        importlib.import_module(module.name)
    found: list[type[BackupError]] = []
    pending = [BackupError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_readme_lists_every_exit_code_and_no_other() -> None:
    listed = _readme_exit_codes()
    assert sorted(listed) == sorted(ExitCode)
    assert all(text.strip() for text in listed.values())


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__qualname__)
def test_every_error_exits_with_a_code_of_the_table(cls: type[BackupError]) -> None:
    assert isinstance(cls.exit_code, ExitCode)


def test_the_error_classes_are_found() -> None:
    names = {cls.__name__ for cls in _error_classes()}
    assert {"ConfigError", "DestinationBusy", "LockHeld", "SpoolError", "BadMeta"} <= names


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (RuntimeError("a bug"), ExitCode.INTERNAL),
        (DestinationBusy("held"), ExitCode.TEMPFAIL),
    ],
    ids=["interrupted", "internal", "busy"],
)
def test_main_exits_with_the_code_of_what_ended_the_command(
    raised: BaseException, code: ExitCode, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def command(args: object) -> int:
        raise raised

    # a bug or a Ctrl-C cannot be produced on demand by a real command
    monkeypatch.setattr(verify, "run", command)
    assert cli.main(["verify", str(tmp_path / "db")]) == code
