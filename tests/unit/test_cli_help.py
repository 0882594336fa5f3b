"""`etcd-backupd --help` and each command's `--help` explain every command and option."""

from __future__ import annotations

import argparse

import pytest

from etcd_backupd.cli import build_parser
from etcd_backupd.cli import main as cli_main
from etcd_backupd.commands import COMMANDS


def _commands(only: str | None = None) -> dict[str, argparse.ArgumentParser]:
    (subparsers,) = [
        action
        for action in build_parser(only)._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    return dict(subparsers.choices)


def _one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    # argparse wraps at the terminal's width, and breaks words at hyphens
    monkeypatch.setenv("COLUMNS", "10000")


def _help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli_main(argv)
    assert exited.value.code == 0
    return _one_line(capsys.readouterr().out)


def test_help_lists_every_command_with_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    shown = _help_of(["--help"], capsys)
    (subparsers,) = [
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    summaries = {choice.dest: choice.help for choice in subparsers._choices_actions}
    assert set(summaries) == set(_commands())
    for command, summary in summaries.items():
        assert summary, f"{command} has no one-line help"
        assert f"{command} {_one_line(summary)}" in shown


@pytest.mark.parametrize("command", sorted(_commands()))
def test_help_explains_each_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _commands()[command]
    shown = _help_of([command, "--help"], capsys)
    assert shown.startswith(f"usage: etcd-backupd {command} ")
    assert parser.description, f"{command} has no description"
    assert _one_line(parser.description) in shown
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.metavar or action.dest
        assert action.help, f"{command} {name} is not explained"
        assert str(name) in shown
        explained = action.help % {**vars(action), "prog": parser.prog}
        assert _one_line(explained) in shown, f"{command} {name}"


def test_a_command_line_starting_with_its_command_parses_as_with_every_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """main() builds only the parser of the command a command line starts with: its help, its
    parse of the same words and its errors are those of the whole parser."""
    whole = _commands()
    assert tuple(whole) == COMMANDS
    for command in COMMANDS:
        alone = _commands(command)
        assert list(alone) == [command]
        assert alone[command].format_help() == whole[command].format_help()
    words = ["inspect", "--prefix", "/registry/", "--keys-only", "snapshot.db"]
    assert build_parser("inspect").parse_args(words) == build_parser().parse_args(words)
    for wrong in (["inspect"], ["inspect", "snapshot.db", "--bogus"], ["inspect", "--debug"]):
        errors = []
        for command in ("inspect", None):
            with pytest.raises(SystemExit) as exited:
                build_parser(command).parse_args(wrong)
            errors.append((exited.value.code, capsys.readouterr().err))
        assert errors[0] == errors[1] and errors[0][0] == 2
