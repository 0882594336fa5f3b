"""The commands, a module each: `add_parser(commands)` sets `handler` (its `run`) as the parser's
default, and `run(args)` returns the exit code. Each imports what it uses when it runs: `verify`
and `inspect` then start without gRPC and pydantic, and every command starts faster."""

from __future__ import annotations

import argparse
import importlib

# in the order --help lists them
MODULES = (
    "once",
    "inspect",
    "diff",
    "restore",
    "restore_plan",
    "drill",
    "run",
    "verify",
    "list",
    "prune",
    "check_config",
    "init",
    "keygen",
    "status",
)


COMMANDS = tuple(name.replace("_", "-") for name in MODULES)


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], only: str | None = None
) -> None:
    """The parser of every command, or of command `only` (one of COMMANDS) alone: the other
    modules are then not even imported."""
    for name in MODULES if only is None else (only.replace("-", "_"),):
        importlib.import_module(f"{__name__}.{name}").add_parser(commands)
