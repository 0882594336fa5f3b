"""Commands that live in a module of their own: each has `add_parser(commands)`, which sets
`handler` (its `run`) as the parser's default, and `run(args) -> exit code`."""

from __future__ import annotations

import argparse
import importlib


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser], *names: str) -> None:
    """Add the commands of these modules, in this order (the order --help lists them in)."""
    for name in names:
        importlib.import_module(f"{__name__}.{name}").add_parser(commands)
