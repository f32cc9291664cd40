"""The ``pifair`` command line: a thin layer over the workflows (docs/architecture.md).

Each command is a :class:`~pifair.cli.commands.Command`; its flags are generated from its job
dataclass (:mod:`pifair.cli.flags`, tables in :mod:`pifair.cli.tables`), so a default is written
once, in the dataclass.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from ..errors import PifairError, Terminated
from ..runs import release_locks, removing_refused_runs
from .commands import COMMANDS

__all__ = ["build_parser", "entry", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``pifair`` command."""
    parser = argparse.ArgumentParser(
        prog="pifair",
        description="Privacy-preserving deep learning that stays accurate, cheap and fair.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        command.add(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; pifair's own refusals print one line, anything else is a bug and shows
    its traceback."""
    ns = build_parser().parse_args(argv)
    run = next(c.run for c in COMMANDS if c.name == ns.command)
    again = (
        "continue with --resume RUN_FOLDER"
        if hasattr(ns, "resume")
        else "run the command again to start it over"
    )
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with removing_refused_runs():  # a refusal leaves no stub run folder
            run(ns)
    except PifairError as err:
        if os.environ.get("PIFAIR_DEBUG"):
            raise
        print(f"pifair {ns.command}: error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"\nterminated (SIGTERM); the last checkpoint is intact: {again}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last checkpoint is intact: {again}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        release_locks()  # the command is over (main may be called again in this process)
    return 0


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def entry() -> None:
    """The console script and ``python -m pifair``: :func:`main`, then the process ends.

    A torchrun worker ends without the interpreter's teardown (``os._exit``), once its command
    is over (run folder written, locks released, process group destroyed): gloo's threads,
    destroyed during that teardown, abort the process now and then ("terminate called without
    an active exception", SIGABRT, seen in about one test suite in three), and torchrun then
    stops the other rank mid-run."""
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
