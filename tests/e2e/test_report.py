"""The report through the real processes: a tiny diabetes sweep on two seeds with a baseline and the heuristic,
then ``run.py report`` (paired statistics, the export) and ``run.py report --results`` (the same Markdown from
the export alone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def run_py(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # 55 s on 2 cores under load: out of the default suite for its 15 minutes; -m slow runs it
def test_a_two_seed_sweep_reports_intervals_and_p_values_and_renders_again_from_its_export(tmp_path):
    db, out = tmp_path / "r.duckdb", tmp_path / "runs"
    sweep = run_py("--task", "diabetes", "--regime", "100", "--epochs", "3", "--seeds", "2", "--controller",
                   "none,heuristic", "--db", str(db), "--out", str(out))  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr
    report = run_py("report", "--db", str(db), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "results.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| Regime | Start | Model | Seeds | Pairs"))
    assert "| 95 % CI | Re-run lands in (95 %) |" in header and "| Wilcoxon p | Holm p |" in header and "| Calls/run |" in header
    guided = next(line for line in text.splitlines() if line.startswith("| 100 | default | Guided (heuristic) | 2 | 2 |"))
    cells = [c.strip() for c in guided.strip("|").split("|")]
    assert cells[6].startswith("[") and cells[7].startswith("[") and float(cells[9]) > 0  # CI, re-run, p (>= 0.5)
    assert not (tmp_path / "report" / "paper_table.md").exists()  # diabetes is not the paper's task
    again = run_py("report", "--results", str(tmp_path / "report" / "results.csv"), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "results.md").read_text() == text
    bad = run_py("report", "--results", str(tmp_path / "none.csv"))
    assert bad.returncode == 2 and bad.stderr.strip() == (
        f"run.py report: error: --results {tmp_path / 'none.csv'}: cannot read it: No such file or directory"
    )
