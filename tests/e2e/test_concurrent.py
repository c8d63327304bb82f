"""Two training invocations on one database: the second, started while the first plans and trains, gets one line
and exit code 2 (``bus.discovery.invocation_lock``) instead of racing it — before the lock, two invocations started
within a second both planned the same arm as not yet run and recorded it twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.e2e.sweeps import epochs_by_arm, run_sweep

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_a_second_invocation_on_the_same_database_gets_one_line_and_records_nothing(tmp_path):
    db, out = tmp_path / "c.duckdb", tmp_path / "runs"
    flags = ["--task", "diabetes", "--regime", "50", "--epochs", "3", "--controller", "none", "--db", str(db),
             "--out", str(out)]  # fmt: skip
    first = subprocess.Popen([sys.executable, "run.py", *flags], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert first.stdout.readline().startswith("ReflectNet |")  # its headline: it has planned, holding the lock
        second = subprocess.run([sys.executable, "run.py", *flags], cwd=REPO, capture_output=True, text=True,
                                timeout=120)  # fmt: skip
        first_out, first_err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, first_err[-2000:]
    assert second.returncode == 2, second.stdout[-1000:] + second.stderr[-1000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "another run.py invocation" in lines[0] and "Traceback" not in second.stderr
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(1,)]


def test_a_sweep_with_two_jobs_trains_two_arms_at_once_and_every_epoch_is_what_one_job_gives(tmp_path, one_job_sweep):
    run_sweep(tmp_path / "j2.duckdb", tmp_path / "runs", "--jobs", "2")
    assert epochs_by_arm(tmp_path / "j2.duckdb") == one_job_sweep  # every arm's objective and knobs, epoch for epoch
    with duckdb.connect(str(tmp_path / "j2.duckdb"), read_only=True) as con:
        spans = con.execute("SELECT started_at, finished_at FROM runs ORDER BY started_at").fetchall()
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))  # two arms trained at once


@pytest.mark.slow  # a fault scenario python -m bench.faults runs too (several_arms: --jobs 2, trainer killed, resume)
def test_a_trainer_killed_while_another_arm_trains_fails_alone_and_resumes_without_a_duplicate(tmp_path):
    db, out = tmp_path / "k.duckdb", tmp_path / "runs"
    flags = ["--task", "diabetes", "--regime", "full", "--epochs", "300", "--seeds", "2", "--controller", "none",
             "--jobs", "2", "--db", str(db), "--out", str(out)]  # fmt: skip
    sweep = subprocess.Popen([sys.executable, "run.py", *flags], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        victim = None
        for line in sweep.stdout:  # both arms are live once the second has printed an epoch
            if "seed 1 | epoch" in line:
                configs = sorted(out.glob("*/trainer-*.json"))
                victim = configs[0].stem.removeprefix("trainer-")
                break
        assert victim is not None
        pids = subprocess.run(["pgrep", "-f", f"trainer --config .*trainer-{victim}.json"], capture_output=True,
                              text=True).stdout.split()  # fmt: skip
        assert len(pids) == 1
        subprocess.run(["kill", "-9", pids[0]], check=True)
        sweep.communicate(timeout=600)
    finally:
        sweep.kill()
    assert sweep.returncode == 1  # a run failed, the other went on
    with duckdb.connect(str(db), read_only=True) as con:
        status = dict(con.execute("SELECT run_id, status FROM runs").fetchall())
    assert status[victim] == "failed" and [s for r, s in status.items() if r != victim] == ["completed"]
    resumed = subprocess.run([sys.executable, "run.py", "--resume", victim, "--db", str(db), "--out", str(out)],
                             cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT count(*), count(DISTINCT epoch), max(epoch) FROM epochs WHERE run_id = ?",
                           [victim]).fetchall()  # fmt: skip
        assert con.execute("SELECT status FROM runs WHERE run_id = ?", [victim]).fetchall() == [("completed",)]
    assert rows == [(300, 300, 300)]  # every epoch once: none lost, none doubled
