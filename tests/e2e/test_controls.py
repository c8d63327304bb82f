"""The controls through the real processes: a bad start shared by every arm of a pair, the A/A arm (the baseline
with another training order), and the random controller's recorded decisions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

BAD_START = {"learning_rate": 0.01, "dropout": 0.1}


def run_py(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def query(db: Path, sql: str, params=None):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_a_bad_start_pair_with_an_aa_arm_and_the_random_control(tmp_path):
    db, out = tmp_path / "c.duckdb", tmp_path / "runs"
    where = ("--task", "diabetes", "--regime", "full", "--epochs", "3", "--db", str(db), "--out", str(out))
    result = run_py(*where, "--controller", "none,aa,random", "--start", "learning_rate=1e-2,dropout=0.1")
    assert result.returncode == 0, result.stderr
    runs = query(db, "SELECT run_id, pair_id, arm, controller, status, config->'trainer'->'order_seed', "
                     "config->'trainer'->'hyperparameters', config->'experiment'->'start' "
                     "FROM runs ORDER BY started_at")  # fmt: skip
    assert [(arm, controller, status) for _, _, arm, controller, status, *_ in runs] == [
        ("baseline", "none", "completed"), ("aa", "none", "completed"), ("guided", "random", "completed")]
    pair = runs[0][1]
    assert [r[0] for r in runs] == [f"{pair}-baseline", f"{pair}-aa", f"{pair}-random"]
    assert [json.loads(r[5]) for r in runs] == [None, 10_000, None]
    assert all(json.loads(r[6]) == BAD_START == json.loads(r[7]) for r in runs)

    epochs = query(db, "SELECT run_id, epoch, objective, hyperparameters FROM epochs ORDER BY run_id, epoch")
    by_run = {run_id: [(o, json.loads(h)) for r, _, o, h in epochs if r == run_id] for run_id, *_ in runs}
    assert all(knobs[0][1]["learning_rate"] == 0.01 and knobs[0][1]["dropout"] == 0.1 for knobs in by_run.values())
    baseline, aa = by_run[f"{pair}-baseline"], by_run[f"{pair}-aa"]
    assert [h for _, h in aa] == [h for _, h in baseline]  # the same knobs all along: no agent
    assert [o for o, _ in aa] != [o for o, _ in baseline]  # another batch order and other dropout masks

    decisions = query(db, "SELECT epoch, controller, valid, fallback, command, clamped FROM decisions "
                          "WHERE run_id = ? ORDER BY epoch", [f"{pair}-random"])  # fmt: skip
    assert [(e, c, v, f) for e, c, v, f, *_ in decisions] == [(e, "random", True, False) for e in (1, 2, 3)]
    commands = [json.loads(d[4]) for d in decisions]
    assert all(c["rationale"].startswith("random draw for epoch") for c in commands)
    assert len({c["hyperparameters"]["learning_rate"] for c in commands}) == 3  # a new draw every epoch
    applied = [h for _, h in by_run[f"{pair}-random"][1:]]
    assert applied == [c["hyperparameters"] for c in commands[:2]]  # what the trainer trained with next

    # The good start of the same seed is another pair: a bad-start run is never paired with a good-start one.
    good = run_py(*where, "--controller", "none")
    assert good.returncode == 0, good.stderr
    pairs = query(db, "SELECT DISTINCT pair_id FROM runs WHERE arm = 'baseline' ORDER BY pair_id")
    assert len(pairs) == 2 and (pair,) in pairs


@pytest.mark.parametrize(
    "args, message",
    [
        (["--start", "dropout=5"], "--start dropout=5 is outside its hard bounds [0, 0.9]"),
        (["--task", "examples.linefit:LineFit", "--controller", "aa"], "--controller aa: task 'linefit' cannot vary"),
    ],
)
def test_a_bad_start_or_an_aa_arm_the_task_cannot_take_is_one_line_and_exit_2(args, message, tmp_path):
    result = run_py(*args, "--db", str(tmp_path / "x.duckdb"), "--out", str(tmp_path / "runs"), timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"run.py: error: {message}"), lines
    assert not (tmp_path / "runs").exists()
