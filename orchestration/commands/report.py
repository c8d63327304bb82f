"""``python run.py report [--db DB] [--out DIR]``: per task its results table with the paired statistics
(Markdown; MNIST also the paper's table), the per-run results as ``results.csv`` and the figures (PNG), from the
database, which it reads and never writes (during a run, through the recorder that holds it; see
``storage/reader.py``). ``--results FILE.csv [FILE.csv ...]`` renders the same tables from such exports alone."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestration.cli import CliError
from orchestration.commands.parsers import command_parser, db_flag


def main(argv: list[str]) -> int:
    """Write the report and print its table and file names; 2 with one line when it cannot be written."""
    from storage.reader import ReaderError
    from storage.report import render_results, write_report

    parser = command_parser("report")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: <db folder>/report, or the --results file's folder)")  # fmt: skip
    parser.add_argument("--results", type=Path, nargs="+", default=None, metavar="FILE.csv",
                        help="render the tables (and the paired-difference figure) from this exported results.csv "
                             "instead of the database; several are merged, a run counted once (a study run in "
                             "parts, --only each; default: read --db)")  # fmt: skip
    parser.add_argument("--rerun-seeds", type=int, default=None, metavar="M",
                        help="the 'Re-run lands in' column for a re-run on M fresh seeds (default: as many seeds as "
                             "each cell has): check your own re-run of a cell against it")  # fmt: skip
    parser.add_argument("--against", type=Path, nargs="+", default=None, metavar="FILE.csv",
                        help="also judge every cell against the published results exported in FILE.csv (e.g. "
                             "docs/results.csv): does its mean land in the published re-run interval for its number "
                             "of seeds? Written as replication.md and printed")  # fmt: skip
    db_flag(parser)
    try:
        args = parser.parse_args(argv)
        if args.rerun_seeds is not None and args.rerun_seeds < 1:
            raise CliError(f"--rerun-seeds must be at least 1, got {args.rerun_seeds}")
        if args.results is not None:
            if len(args.results) > 1 and args.out is None:  # beside the first would overwrite that export
                raise CliError("--results with several files needs --out DIR for the merged report")
            files, notes = render_results(args.results, args.out or args.results[0].parent, args.rerun_seeds,
                                          args.against)
        else:
            files, notes = write_report(args.db, args.out or args.db.parent / "report", args.rerun_seeds, args.against)
    except (CliError, ReaderError) as exc:  # ReportError and ResultsError are ReaderErrors
        print(f"run.py report: error: {exc}", file=sys.stderr)
        return 2
    print(files[0].read_text())
    if args.against:
        print(files[1].read_text())
    for note in notes:
        print(f"note: {note}")
    print("written:\n" + "\n".join(f"  {path}" for path in files))
    return 0
