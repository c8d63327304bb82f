"""``run.py report`` and ``run.py sql``: the analysis subcommands, which read the database and never write it."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestration.cli import CliError, OneLineParser
from orchestration.spec import default


def analysis_main(argv: list[str]) -> int:
    """``run.py report`` and ``run.py sql``: read the database, never write it.

    During a run the recorder holds the file, so both ask it instead (SELECT only, as of its last commit;
    see storage/reader.py)."""
    from storage.reader import ReaderError
    from storage.report import run_sql, write_report

    parser = OneLineParser(prog=f"run.py {argv[0]}")
    if argv[0] == "sql":
        parser.description = "Answer a SQL query against the database, as a Markdown table."
        parser.add_argument("query", help='e.g. "SELECT * FROM paper_table"')
    else:
        parser.description = (
            "Write per task its results table (Markdown; MNIST: the paper's table) and figures (PNG) from the database."
        )
        parser.add_argument("--out", type=Path, default=None, help="report folder (default: <db folder>/report)")
    parser.add_argument("--db", type=Path, default=default("db"), help=f"DuckDB file (default: {default('db')})")
    try:
        args = parser.parse_args(argv[1:])
        if argv[0] == "sql":
            print(run_sql(args.db, args.query))
            return 0
        files, notes = write_report(args.db, args.out or args.db.parent / "report")
    except (CliError, ReaderError) as exc:  # ReportError is a ReaderError
        print(f"run.py {argv[0]}: error: {exc}", file=sys.stderr)
        return 2
    print(files[0].read_text())
    for note in notes:
        print(f"note: {note}")
    print("written:\n" + "\n".join(f"  {path}" for path in files))
    return 0
