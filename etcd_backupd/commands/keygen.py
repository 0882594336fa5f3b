"""`etcd-backupd keygen`: a new age identity, for hosts without the age CLI."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..clock import SYSTEM_CLOCK
from ..errors import ExitCode
from .common import write_new_private


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "keygen",
        help="make a new age identity and print its recipient",
        description="Make a new age X25519 identity, in the file format of age-keygen (`age -d "
        "-i FILE` reads it), and print its recipient (age1...) on stdout, for a destination's "
        "`encryption.recipients`. Keep the identity off the hosts that take backups: only "
        "reading them back (verify, restore, drill) needs it. Without --output the identity "
        "goes to stdout and the recipient to stderr.",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        help="write the identity here, readable by its owner only (never over an existing file)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..encryption import new_identity

    text, recipient = new_identity(SYSTEM_CLOCK.now())
    if args.output is None:
        sys.stdout.write(text)
        print(f"Public key: {recipient}", file=sys.stderr)
        return ExitCode.OK
    write_new_private(args.output, text)
    print(recipient)
    return ExitCode.OK
