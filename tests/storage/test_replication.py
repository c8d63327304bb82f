"""storage.replication: a re-run's cells judged against the published study's re-run intervals. The published
diabetes sweep has 10 seeds (100-109): its first five play the re-run and its last five the published study, so
every number is checked against storage.statistics on the same differences."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from storage import statistics as st
from storage.replication import replicated_cells, replication_markdown
from storage.report_stats import all_stats
from storage.results import read_results_csv, write_results_csv

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """The published diabetes runs split by seed: (seeds 100-104 as a re-run, seeds 105-109 as published) CSVs."""
    runs = [r for r in read_results_csv(REPO / "docs" / "results.csv") if r.task == "diabetes"]
    folder = tmp_path_factory.mktemp("halves")
    rerun = write_results_csv([r for r in runs if r.seed < 105], folder / "rerun.csv")
    published = write_results_csv([r for r in runs if r.seed >= 105], folder / "published.csv")
    return rerun, published


def test_each_cell_is_judged_by_the_published_cells_rerun_interval_for_its_seeds(halves):
    rerun, published = (read_results_csv(path) for path in halves)
    mine, theirs = all_stats(rerun), all_stats(published)
    cells = replicated_cells(mine, theirs)
    assert len(cells) == 10  # 2 starts x (A/A, random, plateau, heuristic, llm)
    for cell in cells:
        setting = next(k for k in theirs if k[0] == "diabetes")
        key = next(k for k, c in theirs[setting].stats.items()
                   if c.comparison and (c.runs[0].start, theirs[setting].labels[k]) == (cell.start, cell.label))  # fmt: skip
        published_cell = theirs[setting].stats[key].comparison
        assert (cell.seeds, cell.published_seeds) == (5, 5)
        assert cell.interval == st.rerun_interval(published_cell.differences, 5)
        low, high = cell.interval
        assert cell.verdict == ("inside" if low <= cell.mean <= high else "outside")
    llm = next(c for c in cells if c.label == "Guided (llm)" and c.start == "{}")
    assert llm.verdict == "inside" and llm.mean == pytest.approx(1.11, abs=0.01)  # seeds 100-104: +1.11 RMSE


def test_a_cell_the_published_study_lacks_says_so_and_the_count_leaves_it_out(halves):
    rerun = read_results_csv(halves[0])
    published = [r for r in read_results_csv(halves[1]) if r.controller != "plateau"]
    cells = replicated_cells(all_stats(rerun), all_stats(published))
    missing = [c for c in cells if "plateau" in c.label]
    assert [c.verdict for c in missing] == ["not in the published results"] * 2
    text = replication_markdown(cells, "published.csv")
    judged = [c for c in cells if c.verdict in ("inside", "outside")]
    inside = sum(c.verdict == "inside" for c in judged)
    assert f"* {inside} of 8 cells inside" in text and text.startswith("# Re-run against published.csv")
    assert inside == 8 and "* By chance alone 0.40 of 8 cells are expected outside; none is." in text


def test_report_against_writes_and_prints_the_check_and_a_bad_export_is_one_line(halves, tmp_path):
    rerun, published = halves
    report = subprocess.run([sys.executable, "run.py", "report", "--results", str(rerun), "--out", str(tmp_path),
                             "--against", str(published)], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert report.returncode == 0, report.stderr
    check = (tmp_path / "replication.md").read_text()
    assert check in report.stdout and f"# Re-run against {published}" in check
    assert "| diabetes | full | default | Guided (llm) | 5 | +1.1" in check
    bad = subprocess.run([sys.executable, "run.py", "report", "--results", str(rerun), "--out", str(tmp_path / "bad"),
                          "--against", str(tmp_path / "none.csv")], cwd=REPO, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip() == (
        f"run.py report: error: --against {tmp_path / 'none.csv'}: cannot read it: No such file or directory")
    assert not (tmp_path / "bad").exists()  # read before anything is written: no half-written report


def test_a_cell_on_the_published_seeds_is_not_judged_and_no_match_at_all_says_so(halves):
    published = read_results_csv(halves[1])
    same = replicated_cells(all_stats(published), all_stats(published))
    assert {c.verdict for c in same} == {"not a fresh re-run: shares seed(s) 105, 106, 107, 108, 109"}
    text = replication_markdown(same, "published.csv")
    assert "**No cell judged**" in text and "cells inside" not in text


def test_a_zero_width_interval_holds_a_mean_that_differs_by_rounding_alone():
    from storage.replication import ReplicatedCell

    def cell(mean: float) -> ReplicatedCell:
        return ReplicatedCell("diabetes", "full", "{}", "Guided (llm)", 5, mean, 10, 0.0, (0.0, 0.0))

    assert cell(3e-15).verdict == "inside" and cell(-3e-15).verdict == "inside" and cell(1e-6).verdict == "outside"


def test_the_whole_rerun_is_judged_by_bonferroni_intervals_at_one_minus_alpha_over_k(halves):
    rerun, published = (read_results_csv(path) for path in halves)
    theirs = all_stats(published)
    cells = replicated_cells(all_stats(rerun), theirs)
    judged = [c for c in cells if c.verdict in ("inside", "outside")]
    k = len(judged)
    assert k == 10
    for cell in judged:
        published_cell = next(c.comparison for s in theirs.values() for key, c in s.stats.items()
                              if c.comparison and (c.runs[0].start, s.labels[key]) == (cell.start, cell.label))  # fmt: skip
        assert cell.table_interval == st.rerun_interval(published_cell.differences, 5, 1 - 0.05 / k)
        low, high = cell.table_interval  # wider than the cell's own 95 % interval, around the same centre
        assert low <= cell.interval[0] and cell.interval[1] <= high
        assert cell.table_verdict == ("inside" if low <= cell.mean <= high else "outside")
    text = replication_markdown(cells, "published.csv")
    together = sum(c.table_verdict == "inside" for c in judged)
    assert f"**The re-run as a whole: {together} of 10 cells inside their Bonferroni interval** (each at 99.5 %" in text
    assert "| All 10 together (95 %, Bonferroni) | Verdict (together) |" in text


def test_misses_are_read_against_the_binomial_tail_and_one_miss_fails_the_whole_rerun():
    from storage.replication import ReplicatedCell

    def cell(label: str, mean: float) -> ReplicatedCell:
        return ReplicatedCell("mnist", "100", "{}", label, 5, mean, 15, 0.0, (-1.0, 1.0), (), (-2.0, 2.0))

    cells = [cell("A/A", 0.5), cell("Guided (llm)", 1.5), cell("Guided (plateau)", 2.5)]
    assert [c.verdict for c in cells] == ["inside", "outside", "outside"]
    assert [c.table_verdict for c in cells] == ["inside", "inside", "outside"]
    text = replication_markdown(cells, "docs/results.csv")
    assert f"2 or more outside has probability {st.misses_by_chance(2, 3):.2f} if the cells were independent" in text
    assert "**The re-run as a whole: 2 of 3 cells inside their Bonferroni interval** (each at 98.33 %" in text
    assert text.count("| outside |") == 3 and "the cells outside did not land where" in text  # 2 alone + 1 together


def test_a_rerun_of_several_tasks_judges_each_against_its_own_published_setting():
    runs = read_results_csv(REPO / "docs" / "results.csv")
    rerun = [r for r in runs if (r.task == "diabetes" and r.seed < 105) or r.task == "cartpole"]
    published = [r for r in runs if (r.task == "diabetes" and r.seed >= 105) or r.task == "cartpole"]
    cells = replicated_cells(all_stats(rerun), all_stats(published))
    by_task = {task: [c for c in cells if c.task == task] for task in ("diabetes", "cartpole")}
    assert len(by_task["diabetes"]) == 10 and all(c.judged for c in by_task["diabetes"])
    assert len(by_task["cartpole"]) == 10 and not any(c.judged for c in by_task["cartpole"])  # the same seeds
