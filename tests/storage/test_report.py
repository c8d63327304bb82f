"""The report and SQL commands against a real DuckDB file filled through the recorder's own writer."""

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from bus.messages import Reflection, ReflectionRecord, RunFinished
from storage.recorder import RecordBuffer
from storage.report import ReportError, run_sql, write_report
from storage.schema import migrate
from tests.storage.test_recorder import decision_record, epoch_record, run_started

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "rep.duckdb"
    with duckdb.connect(str(path)) as con:
        migrate(con)
        buffer = RecordBuffer(con)
        for seed, final in ((0, 0.90), (1, 0.94)):
            for arm in ("baseline", "guided"):
                run_id = f"{arm}{seed}"
                buffer.add(run_started(run_id, arm=arm, seed=seed))
                for epoch, acc in enumerate((0.5, 0.8, final), 1):
                    buffer.add(epoch_record(run_id, epoch, acc if arm == "baseline" else acc - 0.01))
                    if arm == "guided":
                        buffer.add(decision_record(run_id, epoch, 1e-3))
                buffer.add(
                    ReflectionRecord(
                        run_id=run_id,
                        reflection=Reflection(
                            epoch=2, about_epoch=1, prev_val_acc=0.5, val_acc=0.8, verdict="beneficial", text="up"
                        ),
                    )
                )
                buffer.add(RunFinished(run_id=run_id, status="completed", finished_at=time.time()))
        buffer.flush()
    return path


def test_report_writes_the_table_with_mean_std_and_n_and_three_figures(db, tmp_path):
    files, notes = write_report(db, tmp_path / "report")
    assert [f.name for f in files] == [
        "paper_table.md",
        "validation_accuracy.png",
        "hyperparameters.png",
        "decisions.png",
    ]
    assert notes == []
    table = files[0].read_text()
    assert "| 100 | 100 | Baseline | 2 | 0.9200 ± 0.0283 | 0.9200 ± 0.0283 | 0.9000 ± 0.0000 |" in table
    assert "| 100 | 100 | Guided (heuristic) | 2 | 0.9100 ± 0.0283 |" in table
    for png in files[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_sql_answers_as_a_markdown_table_and_refuses_bad_sql(db):
    answer = run_sql(db, "SELECT arm, count(*) AS runs FROM runs GROUP BY arm ORDER BY arm")
    assert answer.splitlines() == ["| arm | runs |", "|---|---|", "| baseline | 2 |", "| guided | 2 |", "(2 rows)"]
    with pytest.raises(ReportError, match="SQL error: Parser Error"):
        run_sql(db, "SELEC 1")
    with pytest.raises(ReportError, match="Catalog Error"):
        run_sql(db, "SELECT * FROM no_such_table")


def test_report_and_sql_from_the_command_line(db, tmp_path):
    report = subprocess.run(
        [sys.executable, "run.py", "report", "--db", str(db), "--out", str(tmp_path / "r")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    assert "Guided (heuristic)" in report.stdout and str(tmp_path / "r" / "decisions.png") in report.stdout
    bad = subprocess.run(
        [sys.executable, "run.py", "sql", "DROP TABLE runs", "--db", str(db)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        bad.returncode == 2 and bad.stderr.startswith("run.py sql: error: SQL error:") and "Traceback" not in bad.stderr
    )
    assert run_sql(db, "SELECT count(*) AS n FROM runs").splitlines()[2] == "| 4 |"  # read-only: nothing dropped
    missing = subprocess.run(
        [sys.executable, "run.py", "report", "--db", str(tmp_path / "none.duckdb")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        missing.returncode == 2
        and missing.stderr.strip() == f"run.py report: error: no database at {tmp_path / 'none.duckdb'}"
    )
    unwritable = subprocess.run(
        [sys.executable, "run.py", "report", "--db", str(db), "--out", "/proc/reflectnet-report"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unwritable.returncode == 2 and unwritable.stderr.strip() == (
        "run.py report: error: --out /proc/reflectnet-report: cannot write the report there: No such file or directory"
    )
