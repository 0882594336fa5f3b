"""Commands that live in a module of their own: each has `add_parser(commands)`, which sets
`handler` (its `run`) as the parser's default, and `run(args) -> exit code`."""

from __future__ import annotations

import argparse
import importlib

MODULES = ("init", "keygen", "status")


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parser(commands)
