"""``python run.py sql "SELECT ..." [--db DB]``: answer a SQL query against the database as a Markdown table.

It reads the database and never writes it; during a run the recorder holds the file, so the query goes to it
instead (SELECT only, as of its last commit; see ``storage/reader.py``)."""

from __future__ import annotations

import sys

from orchestration.cli import CliError
from orchestration.commands.parsers import command_parser, db_flag


def main(argv: list[str]) -> int:
    """Print the query's answer; 2 with one line for a bad flag, an empty query or one the database refuses."""
    from storage.reader import ReaderError
    from storage.report import run_sql

    parser = command_parser("sql")
    parser.add_argument("query", help='e.g. "SELECT * FROM paper_table"')
    db_flag(parser)
    try:
        args = parser.parse_args(argv)
        print(run_sql(args.db, args.query))
    except (CliError, ReaderError) as exc:
        print(f"run.py sql: error: {exc}", file=sys.stderr)
        return 2
    return 0


