"""``run.py study`` through the real processes: a small cut of the quick study (diabetes, 2 seeds, 3 epochs, the
baseline, the A/A arm and the heuristic, from the good and the bad start) runs into one database and writes the
report with the noise floor and the rescue table; run again, it skips everything it completed; stopped mid-way
and started again, it completes with every arm recorded once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def study(tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "run.py", "study", "--quick", "--seeds", "2", "--epochs", "3", "--controller", "aa,heuristic",
            "--db", str(tmp_path / "s.duckdb"), "--out", str(tmp_path / "runs"), "--report", str(tmp_path / "report"),
            *extra]  # fmt: skip


def completed(db: Path) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT config->>'fingerprint', count(*) FROM runs WHERE status = 'completed' "
                           "GROUP BY 1 ORDER BY 1").fetchall()  # fmt: skip


def test_a_small_study_reports_the_noise_floor_and_rescue_and_a_second_run_skips_what_it_did(tmp_path):
    first = subprocess.run(study(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "study 1/2: diabetes full, 3 epochs, seeds 100-101, good start" in first.stdout
    assert "study 2/2: diabetes full, 3 epochs, seeds 100-101, bad start learning_rate=0.0001" in first.stdout
    text = (tmp_path / "report" / "results.md").read_text()
    assert "A/A noise floor (regime full, start default)" in text and "Rescue from a bad start" in text
    assert "| full | learning_rate=0.0001 | Guided (heuristic) | 2 |" in text
    runs = completed(tmp_path / "s.duckdb")
    assert len(runs) == 2 * 2 * 3 and all(n == 1 for _, n in runs)  # starts x seeds x (baseline, aa, heuristic)
    again = subprocess.run(study(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("6 run(s), 6 already completed") == 2
    assert completed(tmp_path / "s.duckdb") == runs


@pytest.mark.slow
def test_a_study_stopped_mid_way_continues_where_it_stopped_with_every_arm_once(tmp_path):
    process = subprocess.Popen(study(tmp_path, "--epochs", "8"), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    lines = []
    for line in process.stdout:  # stop it inside the second sweep's first arm
        lines.append(line)
        if "study 2/2" in line:
            time.sleep(6)
            os.killpg(process.pid, signal.SIGINT)
            break
    rest = process.communicate(timeout=300)[0]
    assert process.returncode == 130, "".join(lines) + rest
    assert "study stopped: run the same command again to resume it" in rest
    resumed = subprocess.run(study(tmp_path, "--epochs", "8"), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    runs = completed(tmp_path / "s.duckdb")
    assert len(runs) == 12 and all(n == 1 for _, n in runs)
    with duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True) as con:
        epochs = con.execute("SELECT run_id, count(*), count(DISTINCT epoch) FROM epochs GROUP BY 1").fetchall()
    assert all(n == distinct for _, n, distinct in epochs)


@pytest.mark.slow  # 8 runs of 40 epochs (both starts, 2 seeds, baseline and plateau)
def test_a_study_on_seeds_of_ones_own_is_judged_against_the_published_results_and_leaves_docs_alone(tmp_path):
    published = (REPO / "docs" / "results.md").read_text()
    rerun = subprocess.run([sys.executable, "run.py", "study", "--only", "diabetes", "--seed", "200", "--seeds", "2",
                            "--controller", "plateau", "--db", str(tmp_path / "r.duckdb"), "--out",
                            str(tmp_path / "runs")], cwd=REPO, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    check = (tmp_path / "r" / "replication.md").read_text()  # the report beside its database, not in docs/
    assert check.startswith("# Re-run against docs/results.csv") and check in rerun.stdout
    rows = [line for line in check.splitlines() if line.startswith("| diabetes | full |")]
    assert len(rows) == 2 and all("| Guided (plateau) | 2 |" in row and "| 10 |" in row for row in rows)
    assert all(row.rstrip(" |").endswith(("inside", "outside")) for row in rows)  # alone, then together
    assert "* **The re-run as a whole: " in check and "| All 2 together (95 %, Bonferroni) |" in check
    assert (REPO / "docs" / "results.md").read_text() == published
