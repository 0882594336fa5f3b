"""The commands, a module each: `add_parser(commands)` sets `handler` (its `run`) as the parser's
default, and `run(args)` returns the exit code. Each imports what it uses when it runs: `verify`
and `inspect` then start without gRPC and pydantic, and every command starts faster. `once` and
`run` are in cli.py."""

from __future__ import annotations

import argparse
import importlib


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser], *names: str) -> None:
    """Add the commands of these modules, in this order (the order --help lists them in)."""
    for name in names:
        importlib.import_module(f"{__name__}.{name}").add_parser(commands)
