"""Asynchronous decisions (``--decisions async``) through the real processes: training never waits for the
controller, each command is applied at the first epoch boundary after it arrives (recorded: the epoch asked for and
the epoch applied after), a slow controller's requests are superseded rather than queued, and ``--replay`` of an
asynchronous run reproduces it epoch for epoch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

SLOW_CONTROLLER = '''
import time
from agents.controllers.rules import HeuristicPolicy


class Slow(HeuristicPolicy):
    """The rule set, answering after 0.3 s: slower than several epochs of the diabetes task at 50 patients (10-20 ms
    each, checkpoint and records included), faster than a run of 150."""

    name = "slow"

    def propose(self, state):
        time.sleep(0.3)
        return super().propose(state)


def make_controller(cfg):
    return Slow()
'''


def query(db: Path, sql: str, params: list | None = None):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def train(flags: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "run.py", *flags], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=env)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return run


def test_an_async_run_applies_each_command_after_it_arrives_and_its_replay_matches(tmp_path):
    db, out = tmp_path / "a.duckdb", tmp_path / "runs"
    flags = ["--db", str(db), "--out", str(out)]
    train(["--task", "diabetes", "--regime", "50", "--epochs", "8", "--arms", "guided", "--controller", "random",
           "--decisions", "async", *flags])  # fmt: skip
    (run_id,) = query(db, "SELECT run_id FROM runs")[0]
    rows = query(db, "SELECT epoch, applied_epoch, applied, wait_ms, command FROM decisions WHERE run_id = ? "
                     "ORDER BY epoch", [run_id])  # fmt: skip
    assert rows, "no decision was recorded"
    applied = [(asked, after, json.loads(command)) for asked, after, was, _, command in rows if was]
    assert applied and all(after > asked for asked, after, _ in applied)  # applied at a later boundary, never before
    assert all(wait == 0 for _, _, was, wait, _ in rows if was)  # the trainer never waited for one it applied
    # Each applied command is what the next epoch trained with: the one asked after `asked`, in force from `after + 1`.
    trained = dict(query(db, "SELECT epoch, hyperparameters FROM epochs WHERE run_id = ?", [run_id]))
    for _, after, command in applied:
        used = json.loads(trained[after + 1])
        assert all(used[k] == pytest.approx(v) for k, v in command["hyperparameters"].items()), (after, command, used)
    assert query(db, "SELECT config->'experiment'->>'decisions' FROM runs")[0][0] == "async"

    replay = train(["--replay", run_id, *flags])
    assert f"of {run_id}: 8 epochs compared; max |delta| val_rmse 0.00e+00" in replay.stdout


def test_a_slow_controller_never_stalls_training_and_newer_metrics_supersede_the_unsent(tmp_path):
    db, out = tmp_path / "s.duckdb", tmp_path / "runs"
    (tmp_path / "slowctl.py").write_text(SLOW_CONTROLLER)
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    train(["--task", "diabetes", "--regime", "50", "--epochs", "150", "--arms", "guided", "--controller",
           "slowctl:make_controller", "--decisions", "async", "--db", str(db), "--out", str(out)], env)  # fmt: skip
    rows = query(db, "SELECT epoch, applied_epoch, wait_ms FROM decisions ORDER BY epoch")
    superseded = query(db, "SELECT (data->>'epoch')::INT, (data->>'in_flight')::INT FROM events "
                           "WHERE event = 'request_superseded' ORDER BY 1")  # fmt: skip
    assert superseded and all(in_flight < epoch for epoch, in_flight in superseded)
    asked = [epoch for epoch, *_ in rows]
    assert not set(asked) & {epoch for epoch, _ in superseded}  # an epoch is either asked about or superseded
    assert all(after is None or after > epoch for epoch, after, _ in rows)
    waits = [wait for epoch, after, wait in rows if after is not None]
    assert waits and max(waits) == 0.0  # the trainer waited for none it applied
