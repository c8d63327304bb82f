"""``python run.py [FLAGS]``: train a task with and without an agent steering it (the default command)."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack

from orchestration.cli import CliError, build_parser, cost_notice, validate_args
from orchestration.commands import command_listing
from orchestration.commands.parsers import hold_database


def parser() -> argparse.ArgumentParser:
    """The training flags, with the subcommands listed after them in ``--help``."""
    p = build_parser()
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the listing's lines; flag help still wraps
    p.epilog = command_listing()
    return p


def main(argv: list[str]) -> int:
    """Check the flags, then run the invocation (which says back each instruction, and what of them cannot take
    effect, before training); 2 with one line for a bad flag."""
    try:
        args = parser().parse_args(argv)
    except CliError as exc:  # a flag's own type check
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    with ExitStack() as held:
        if not hold_database(held, args.db, "run.py"):  # before the database is opened: a second one gets one line
            return 2
        try:
            spec = validate_args(args)
        except CliError as exc:
            print(f"run.py: error: {exc}", file=sys.stderr)
            return 2
        if (notice := cost_notice(spec)) is not None:
            print(notice, flush=True)
        from orchestration.session import run_invocation  # torch, langchain, DuckDB: only once there is work

        return run_invocation(spec)
