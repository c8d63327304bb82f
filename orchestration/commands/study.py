"""``python run.py study [--quick]``: run the study (``orchestration.study``) into one database, resumable, then
write its report: the tables with intervals, p-values, the A/A noise floor, rescue rates and cost, the figures,
and the per-run results exported beside them. With seeds or epochs of one's own (``--seed``, ``--seeds``,
``--epochs``) it is a re-run, not the published study: its own database and report (never ``docs/``), and every
cell judged against the published results (``replication.md``, :mod:`storage.replication`)."""

from __future__ import annotations

import dataclasses
import sys
from contextlib import ExitStack
from pathlib import Path

from orchestration.cli import CliError
from orchestration.commands.parsers import command_parser, hold_database
from orchestration.study import STUDY_CONTROLLERS

FULL_DB = Path("runs") / "study.duckdb"
QUICK_DB = Path("runs") / "study-quick.duckdb"
FULL_REPORT = Path("docs")  # the published study: docs/results.md and the exported results beside it
PUBLISHED = FULL_REPORT / "results.csv"
RERUN_DB = Path("runs") / "study-rerun.duckdb"  # the study's cells on seeds (or epochs) of one's own


def parser():
    """The study's flags."""
    p = command_parser("study")
    p.add_argument("--quick", action="store_true",
                   help="the diabetes task only, 3 seeds, 20 epochs: every column of the report in minutes "
                        f"(database {QUICK_DB}, report in {QUICK_DB.with_suffix('')})")  # fmt: skip
    p.add_argument("--db", type=Path, default=None, help=f"the study's database (default: {FULL_DB}, {QUICK_DB} "
                   f"for --quick, {RERUN_DB} with --seed, --seeds or --epochs)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("runs"), help="folder for run directories (default: runs)")
    p.add_argument("--report", type=Path, default=None,
                   help=f"report folder (default: {FULL_REPORT}/ for the study, else the database's name)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="torch device (default: auto)")
    p.add_argument("--jobs", type=int, default=1, help="arms trained at once (run.py --jobs; default: 1)")
    p.add_argument("--only", default=None, metavar="TASK[:REGIME]",
                   help="run only the study's sweeps of this task (and regime), e.g. mnist:100")
    p.add_argument("--seed", type=int, default=None, help="first seed instead of the study's (e.g. to re-run cells "
                   f"on seeds of your own: into {RERUN_DB}, each cell then judged against {PUBLISHED})")  # fmt: skip
    p.add_argument("--seeds", type=int, default=None, help="seeds per sweep instead of the study's")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run instead of the study's")
    p.add_argument("--controller", default=None, help="a comma list of the study's controllers to run "
                   f"(default: all of {','.join(STUDY_CONTROLLERS)}; the baseline 'none' always runs)")  # fmt: skip
    p.add_argument("--list", action="store_true", help="print the study's sweeps and exit")
    return p


def chosen_sweeps(args) -> list:
    """The study's sweeps narrowed and changed as the flags say; CliError (one line) for a bad choice."""
    from orchestration.study import STUDY_CONTROLLERS, study_sweeps

    sweeps = study_sweeps(args.quick)
    if args.only:
        task, _, regime = args.only.partition(":")
        sweeps = [s for s in sweeps if s.task == task and (not regime or s.regime == regime)]
        if not sweeps:
            known = sorted({f"{s.task}:{s.regime}" for s in study_sweeps(args.quick)})
            raise CliError(f"--only {args.only}: the study has no such sweep; it has {', '.join(known)}")
    controllers = STUDY_CONTROLLERS
    if args.controller:
        asked = [c.strip() for c in args.controller.split(",") if c.strip()]
        unknown = [c for c in asked if c not in STUDY_CONTROLLERS]
        if unknown or not asked:
            raise CliError(f"--controller {args.controller}: the study's controllers are {','.join(STUDY_CONTROLLERS)}")
        controllers = tuple(c for c in STUDY_CONTROLLERS if c == "none" or c in asked)
    for name in ("seed", "seeds", "epochs"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "seed" else 1):
            raise CliError(f"--{name} {value}: must be at least {0 if name == 'seed' else 1}")
    changes = {k: getattr(args, k) for k in ("seed", "seeds", "epochs") if getattr(args, k) is not None}
    return [dataclasses.replace(s, controllers=controllers, **changes) for s in sweeps]


def main(argv: list[str]) -> int:
    """Run the study and write its report; 0 all completed, 1 a run failed, 2 a bad flag, 130 stopped."""
    from orchestration.study import run_study

    try:
        args = parser().parse_args(argv)
        sweeps = chosen_sweeps(args)
    except CliError as exc:
        print(f"run.py study: error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(sweep.label for sweep in sweeps))
        return 0
    rerun = any(getattr(args, k) is not None for k in ("seed", "seeds", "epochs"))  # not the published protocol
    db = args.db or (QUICK_DB if args.quick else RERUN_DB if rerun else FULL_DB)
    report = args.report or (db.with_suffix("") if args.quick or rerun else FULL_REPORT)
    with ExitStack() as held:  # the whole study, so that no other invocation slips in between two sweeps
        if not hold_database(held, db, "run.py study"):
            return 2
        code = run_study(sweeps, db, args.out, ["--device", args.device, "--jobs", str(args.jobs)])
    if code in (2, 130):
        return code
    from orchestration.commands.report import main as write_report

    # other epochs are another protocol: no published cell to judge a cell against
    comparable = rerun and not args.quick and args.epochs is None and PUBLISHED.exists()
    against = ["--against", str(PUBLISHED)] if comparable else []
    written = write_report(["--db", str(db), "--out", str(report), *against])
    return code or written
