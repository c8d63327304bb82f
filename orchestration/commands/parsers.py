"""What the subcommands' parsers share: a one-line-error parser described by its :data:`COMMANDS` line, and
the ``--db`` flag with :class:`orchestration.spec.RunSpec`'s default."""

from __future__ import annotations

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
