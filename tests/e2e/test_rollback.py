"""A rollback through the real processes: a diabetes run started (``--start``) with a learning rate high enough to
collapse, the heuristic returning to the best epoch with a lower learning rate (``decisions.rollback_to``), and
``--replay`` of it reproducing every epoch exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

def query(db: Path, sql: str, params: list | None = None):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_a_collapsed_run_rolls_back_and_its_replay_matches_epoch_for_epoch(tmp_path):
    db, out = tmp_path / "r.duckdb", tmp_path / "runs"
    flags = ["--db", str(db), "--out", str(out)]
    original = subprocess.run(
        [sys.executable, "run.py", "--task", "diabetes", "--regime", "50", "--epochs", "6", "--arms", "guided",
         "--controller", "heuristic", "--start", "learning_rate=0.1", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert original.returncode == 0, original.stderr[-2000:]
    (run_id,) = query(db, "SELECT run_id FROM runs")[0]
    assert query(db, "SELECT DISTINCT hyperparameters->>'learning_rate' FROM epochs WHERE epoch = 1") == [("0.1",)]
    rollbacks = query(db, "SELECT epoch, rollback_to, command->>'rollback', command->>'rationale' FROM decisions "
                          "WHERE rollback_to IS NOT NULL")  # fmt: skip
    assert rollbacks, query(db, "SELECT epoch, objective FROM epochs ORDER BY epoch")
    epoch, rollback_to, flag, rationale = rollbacks[0]
    assert rollback_to < epoch and flag == "true" and "collapsed" in rationale
    # The knobs it set apply from the restored epoch on: the learning rate halved.
    after = query(db, "SELECT hyperparameters->>'learning_rate' FROM epochs WHERE epoch = ?", [epoch + 1])
    assert float(after[0][0]) == pytest.approx(0.05)
    assert f"rolled back to epoch {rollback_to}" in original.stdout
    assert (out / next(p.name for p in out.iterdir()) / "checkpoints" / f"{run_id}.best.safetensors").exists()

    replay = subprocess.run([sys.executable, "run.py", "--replay", run_id, *flags], cwd=REPO, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert f"of {run_id}: 6 epochs compared; max |delta| val_rmse 0.00e+00" in replay.stdout
    (replay_id,) = query(db, "SELECT run_id FROM runs WHERE run_id <> ?", [run_id])[0]
    pairs = query(db, "SELECT a.epoch, a.objective, b.objective FROM epochs a JOIN epochs b USING (epoch) "
                      "WHERE a.run_id = ? AND b.run_id = ? ORDER BY epoch", [run_id, replay_id])  # fmt: skip
    assert len(pairs) == 6 and all(a == b for _, a, b in pairs)
    replayed = query(db, "SELECT epoch, rollback_to FROM decisions WHERE run_id = ? AND rollback_to IS NOT NULL "
                         "ORDER BY epoch", [replay_id])  # fmt: skip
    assert replayed == [r[:2] for r in sorted(rollbacks)]
