"""The `etcd-backupd` command: the top-level parser, logging set-up, dispatch and the exit code.
Every command is a module of commands/."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .commands import COMMANDS, add_parsers
from .commands.common import print_error
from .errors import BackupError, ExitCode
from .logs import setup_logging
from .memory import configure_malloc


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or only `command` (one of COMMANDS) among the commands."""
    parser = argparse.ArgumentParser(
        prog="etcd-backupd",
        description="Scheduled, verified backups of etcd v3: snapshot, verify, ship, prune.",
        epilog="Run 'etcd-backupd COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"etcd-backupd {__version__}")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("ETCD_BACKUPD_LOG_FORMAT", "text"),
        help="text for people, json (one object per line) for journald and Kubernetes",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    parser.add_argument(
        "--debug", action="store_true", help="debug logging and full tracebacks on errors"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_parsers(commands, only=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_malloc()
    words = sys.argv[1:] if argv is None else list(argv)
    # a command line that starts with its command is parsed the same by that command's parser
    # alone, and building the other thirteen, importing their modules, is a tenth of the run of
    # a short command such as inspect; anything else (options first, --help, a typo) gets all
    command = words[0] if words and words[0] in COMMANDS else None
    args = build_parser(command).parse_args(words)
    setup_logging(args.log_format, "debug" if args.debug else args.log_level)
    try:
        return int(args.handler(args))
    except BackupError as exc:
        print_error(args, f"etcd-backupd: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        print_error(args, "etcd-backupd: interrupted")
        return ExitCode.INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        print_error(
            args,
            f"etcd-backupd: internal error: {exc!r} (run with --debug for the traceback, "
            "and please report it)",
        )
        return ExitCode.INTERNAL


def entry() -> NoReturn:
    """The `etcd-backupd` command: `main`, then an exit that skips the interpreter's teardown.

    With gRPC loaded, tearing the interpreter down takes 0.1-0.4 s at the end of every run and
    releases nothing the process still owns: its files are closed and synced, its locks go with
    the process. Output is flushed first; if that fails, or a thread other than this one is still
    at work, the ordinary exit runs instead and reports or waits as usual.
    """
    code = main()
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        sys.exit(code)
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    entry()
