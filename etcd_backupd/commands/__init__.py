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


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parser(commands)
