"""The sweep that ``--jobs 2`` and ``--ray`` are each compared against epoch for epoch, and how to read its epochs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb

from tests.e2e.test_run import REPO

# A start that collapses, so that the heuristic acts (rolls back, lowers the rate): its commands must come out the
# same when its arms share the agent with another's requests in between, or train on another process.
SWEEP = ["--task", "diabetes", "--regime", "50", "--epochs", "6", "--seeds", "2", "--controller", "none,heuristic",
         "--start", "learning_rate=0.1"]  # fmt: skip


def run_sweep(db: Path, out: Path, *extra: str) -> None:
    """Run ``run.py`` with :data:`SWEEP` and ``extra`` flags into ``db``; fails the test with the output's tail."""
    run = subprocess.run([sys.executable, "run.py", *SWEEP, *extra, "--db", str(db), "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]


def epochs_by_arm(db: Path) -> dict[tuple, list[tuple]]:
    """{(seed, arm, controller): [(objective, hyperparameters JSON), ...] in epoch order} of every run in ``db``."""
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT r.seed, r.arm, r.controller, e.objective, e.hyperparameters FROM epochs e "
                           "JOIN runs r USING (run_id) ORDER BY r.seed, r.arm, r.controller, e.epoch").fetchall()  # fmt: skip
    arms: dict[tuple, list] = {}
    for seed, arm, controller, objective, knobs in rows:
        arms.setdefault((seed, arm, controller), []).append((objective, knobs))
    return arms
