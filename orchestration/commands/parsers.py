"""What the subcommands' parsers share: a one-line-error parser described by its :data:`COMMANDS` line, and
the ``--db`` flag with :class:`orchestration.spec.RunSpec`'s default, and the database's invocation lock of the
commands that train."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

from orchestration.cli import OneLineParser
from orchestration.commands import COMMANDS
from orchestration.spec import default


def command_parser(name: str) -> OneLineParser:
    """The parser of subcommand ``name`` (``prog`` ``run.py NAME``, its summary as description)."""
    summary = COMMANDS[name].summary
    return OneLineParser(prog=f"run.py {name}", description=summary[0].upper() + summary[1:] + ".")


def db_flag(parser: OneLineParser, help_text: str = "DuckDB file") -> None:
    """Add ``--db`` (default: RunSpec's)."""
    parser.add_argument("--db", type=Path, default=default("db"), help=f"{help_text} (default: {default('db')})")


def hold_database(held: ExitStack, db: Path, prog: str) -> bool:
    """Take ``db``'s invocation lock (``bus.discovery.invocation_lock``) into ``held`` for the rest of a training
    command; False, after one line on stderr, when another invocation holds it or its folder cannot be written."""
    from bus.discovery import DatabaseBusy, invocation_lock

    try:
        held.enter_context(invocation_lock(db))
        return True
    except DatabaseBusy as exc:
        print(f"{prog}: error: --db {db}: {exc}", file=sys.stderr)
    except OSError as exc:  # the lock file cannot be created: the folder is not writable
        print(f"{prog}: error: --db {db}: cannot open for writing: {exc.strerror}", file=sys.stderr)
    return False
