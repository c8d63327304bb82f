"""``python run.py report [--db DB] [--out DIR]``: per task its results table (Markdown; MNIST: the paper's
table) and figures (PNG), from the database, which it reads and never writes (during a run, through the
recorder that holds it; see ``storage/reader.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestration.cli import CliError
from orchestration.commands.parsers import command_parser, db_flag


def main(argv: list[str]) -> int:
    """Write the report and print its table and file names; 2 with one line when it cannot be written."""
    from storage.reader import ReaderError
    from storage.report import write_report

    parser = command_parser("report")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: <db folder>/report)")
    db_flag(parser)
    try:
        args = parser.parse_args(argv)
        files, notes = write_report(args.db, args.out or args.db.parent / "report")
    except (CliError, ReaderError) as exc:  # ReportError is a ReaderError
        print(f"run.py report: error: {exc}", file=sys.stderr)
        return 2
    print(files[0].read_text())
    for note in notes:
        print(f"note: {note}")
    print("written:\n" + "\n".join(f"  {path}" for path in files))
    return 0
