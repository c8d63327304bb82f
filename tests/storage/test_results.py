"""Cells keyed by the full protocol, the paired statistics in the report, and the results export that renders
the same Markdown without the database; rows inserted into a DuckDB built by storage.schema.migrate."""

import math
import time
from pathlib import Path

import duckdb
import pytest

from bus.messages import RunFinished, RunStarted
from storage.reader import open_reader
from storage.recorder import RecordBuffer
from storage.report import render_results, write_report
from storage.results import COLUMNS, NOT_PROTOCOL_OPTIONS, ResultsError, read_results, read_results_csv
from storage.schema import migrate
from tests.storage.test_recorder import epoch_record, regression_record

BAD = {"learning_rate": 0.01}


def started(run_id, arm, controller, seed, epochs=3, start=None, instructions=None, task="mnist", regime="100"):
    experiment = {"task": task, "task_options": {}, "regime": regime, "seed": seed, "epochs": epochs, "arm": arm,
                  "controller": controller}  # fmt: skip
    experiment |= {"start": start} if start else {}
    experiment |= {"instructions": instructions} if instructions else {}
    objective, mode = ("val_rmse", "min") if task == "diabetes" else ("val_acc", "max")
    # The bus does not know the A/A arm yet (another part adds it): it is recorded as guided and set right after.
    return RunStarted(run_id=run_id, pair_id=f"p{seed}", arm="guided" if arm == "aa" else arm, task=task, objective=objective, mode=mode,
                      regime=regime, budget=100, controller=controller, seed=seed, epochs=epochs,
                      started_at=time.time(), config={"experiment": experiment})  # fmt: skip


def add_run(buffer, run_id, arm, controller, seed, finals, **kw):
    """A completed run whose objective per epoch is ``finals`` (the last one its final value)."""
    buffer.add(started(run_id, arm, controller, seed, epochs=len(finals), **kw))
    for epoch, value in enumerate(finals, 1):
        if kw.get("task") == "diabetes":
            buffer.add(regression_record(run_id, epoch, value))
        else:
            buffer.add(epoch_record(run_id, epoch, value))
    buffer.add(RunFinished(run_id=run_id, status="completed", finished_at=time.time()))


def test_a_6_epoch_run_and_two_3_epoch_runs_of_seed_0_are_two_cells_of_one_seed_and_instructions_not_pooled(tmp_path):
    db = tmp_path / "k.duckdb"
    with duckdb.connect(str(db)) as con:
        migrate(con)
        buffer = RecordBuffer(con)
        add_run(buffer, "six", "baseline", "none", 0, [0.5, 0.6, 0.7, 0.8, 0.85, 0.9])
        add_run(buffer, "three-a", "baseline", "none", 0, [0.5, 0.6, 0.7])
        add_run(buffer, "three-b", "baseline", "none", 0, [0.5, 0.6, 0.75])  # the same protocol again: it counts
        add_run(buffer, "drop", "guided", "heuristic", 0, [0.5, 0.6, 0.8], instructions=["raise dropout"])
        add_run(buffer, "lr", "guided", "heuristic", 0, [0.5, 0.6, 0.6], instructions=["lower the learning rate"])
        buffer.flush()
    with open_reader(db) as reader:
        results = {r.run_id: r for r in read_results(reader)}
    assert {k: r.counted for k, r in results.items()} == {"six": True, "three-a": False, "three-b": True, "drop": True,
                                                          "lr": True}  # fmt: skip
    assert results["six"].cell_key != results["three-b"].cell_key and results["drop"].cell_key != results["lr"].cell_key
    text = write_report(db, tmp_path / "out")[0][0].read_text()
    assert "### Setting: epochs 3" in text and "### Setting: epochs 6" in text
    assert '| 100 | 100 | Baseline | 1 | 0.7500 | 0.7500 | 0.9000 |' in text  # three-b alone: one seed, not two
    assert '| 100 | 100 | Guided (heuristic; instructions=["raise dropout"]) | 1 | 0.8000 |' in text
    assert '| 100 | 100 | Guided (heuristic; instructions=["lower the learning rate"]) | 1 | 0.6000 |' in text
    assert "1 completed run of a protocol and seed run again later not counted" in text
    assert "1 seed: no interval" in text


@pytest.fixture
def study(tmp_path):
    """Three seeds of baseline, A/A and heuristic from the default start, and baseline and heuristic from a bad
    start; one diverged heuristic run; a run_costs view as the cost part of ReflectNet defines it."""
    db = tmp_path / "s.duckdb"
    with duckdb.connect(str(db)) as con:
        migrate(con)
        buffer = RecordBuffer(con)
        for seed, (base, aa, guided, bad_base, bad_guided) in enumerate(
            [(0.90, 0.901, 0.93, 0.50, 0.899), (0.91, 0.908, 0.935, 0.40, 0.92), (0.92, 0.921, 0.94, 0.45, math.nan)]
        ):
            add_run(buffer, f"b{seed}", "baseline", "none", seed, [0.5, base])
            add_run(buffer, f"a{seed}", "aa", "none", seed, [0.5, aa])
            add_run(buffer, f"g{seed}", "guided", "heuristic", seed, [0.5, guided])
            add_run(buffer, f"bb{seed}", "baseline", "none", seed, [0.3, bad_base], start=BAD)
            add_run(buffer, f"bg{seed}", "guided", "heuristic", seed, [0.3, bad_guided], start=BAD)
        buffer.flush()
        con.execute("UPDATE runs SET arm = 'aa' WHERE run_id LIKE 'a%'")
        con.execute("CREATE OR REPLACE VIEW run_costs AS SELECT run_id, 2 AS decisions, CASE WHEN arm = 'guided' THEN 2 ELSE 0 "
                    "END AS llm_calls, 100 AS prompt_tokens, 20 AS completion_tokens, 1.5 AS wait_s, 0.0 AS cost_usd "
                    "FROM runs")  # fmt: skip
    return db


def test_the_report_pairs_cells_with_their_baseline_and_prints_floor_verdicts_rescue_and_cost(study, tmp_path):
    files, _ = write_report(study, tmp_path / "out")
    text = files[0].read_text()
    lines = text.splitlines()
    guided = next(line for line in lines if line.startswith("| 100 | default | Guided (heuristic) | 3 | 3 |"))
    # differences +0.03, +0.025, +0.02: mean +0.025, all better, p = 2/8 (the floor with 3 pairs); Holm over the two
    # guided cells (the bad start p = 0.5): 2 · 0.25 = 0.5
    assert "| +0.0250 | [" in guided and "| 3/0 | 0.25 | 0.5 | 1.00 |" in guided and "| better |" in guided
    assert guided.endswith("| 2.0 | 120 | 1.50 | 0.0000 |")
    floor = 1.96 * math.sqrt((0.001**2 + 0.002**2 + 0.001**2) / 3)
    assert f"A/A noise floor (regime 100, start default): ±{floor:.4f} = 1.96 · RMS of 3 A/A difference(s)" in text
    assert "A/A noise floor (regime 100, start learning_rate=0.01): none measured" in text
    assert "1 diverged run(s) (NaN objective) count as the worst final value of the task, 0.4000." in text
    assert "Rescue from a bad start:" in text
    # bad-start heuristic vs the good-start baseline: -0.001 (within the floor), +0.01, NaN -> worst: 2 of 3
    assert "| 100 | learning_rate=0.01 | Guided (heuristic) | 3 | 2 | 67% |" in text
    assert "| 100 | learning_rate=0.01 | Baseline | 3 | 0 | 0% |" in text


def test_the_export_renders_the_same_markdown_without_the_database(study, tmp_path):
    files, _ = write_report(study, tmp_path / "db")
    export = tmp_path / "db" / "results.csv"
    header = export.read_text().splitlines()[0].split(",")
    assert tuple(header) == COLUMNS and len(export.read_text().splitlines()) == 1 + 15
    study.unlink()  # no database from here on
    again, notes = render_results([export], tmp_path / "csv")
    assert [f.name for f in again] == ["results.md", "paper_table.md", "results.csv", "paired_differences.png"]
    assert again[0].read_text() == files[0].read_text()
    assert again[1].read_text() == files[1].read_text()
    assert notes == ["from an export: the per-epoch figures (curves, hyperparameters, decisions) need the database"]


def test_a_study_exported_in_parts_renders_as_the_whole_and_a_run_given_twice_counts_once(study, tmp_path):
    files, _ = write_report(study, tmp_path / "db")
    header, *rows = (tmp_path / "db" / "results.csv").read_text().splitlines()
    first, second = tmp_path / "one.csv", tmp_path / "two.csv"
    first.write_text("\n".join([header, *rows[: len(rows) // 2]]) + "\n")  # two sittings of one study
    second.write_text("\n".join([header, *rows[len(rows) // 2 - 2 :]]) + "\n")  # two rows in both
    merged, _ = render_results([first, second], tmp_path / "merged")
    assert merged[0].read_text() == files[0].read_text()
    assert (tmp_path / "merged" / "results.csv").read_text().splitlines()[1:] == rows


def test_a_damaged_export_is_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("run_id,task\nx,mnist\n")
    with pytest.raises(ResultsError, match=r"not a ReflectNet results export: no column objective, mode"):
        read_results_csv(bad)
    with pytest.raises(ResultsError, match="cannot read it: No such file or directory"):
        read_results_csv(tmp_path / "none.csv")


def test_a_min_task_pairs_with_lower_is_better(tmp_path):
    db = tmp_path / "d.duckdb"
    with duckdb.connect(str(db)) as con:
        migrate(con)
        buffer = RecordBuffer(con)
        for seed, (base, guided) in enumerate([(60.0, 57.0), (61.0, 58.0)]):
            add_run(buffer, f"b{seed}", "baseline", "none", seed, [70.0, base], task="diabetes", regime="full")
            add_run(buffer, f"g{seed}", "guided", "heuristic", seed, [70.0, guided], task="diabetes", regime="full")
        buffer.flush()
    text = write_report(db, tmp_path / "out")[0][0].read_text()
    assert "| full | default | Guided (heuristic) | 2 | 2 | +3.0000 | [+3.0000, +3.0000] | [+3.0000, +3.0000] | 2/0 |" in text
    assert not (tmp_path / "out" / "paper_table.md").exists()  # only MNIST writes the paper's table


def test_the_protocol_leaves_out_the_options_the_planner_leaves_out():
    from orchestration.planning import NON_EXPERIMENT_OPTIONS

    assert NOT_PROTOCOL_OPTIONS == NON_EXPERIMENT_OPTIONS


def test_the_paired_difference_figure_shows_every_cell_inside_it(study, tmp_path):
    from storage.figures import difference_figure, fit_figure
    from storage.report_stats import all_stats
    from tests.storage.test_report import outside_the_figure

    with open_reader(study) as reader:
        stats = all_stats(read_results(reader))
    plt, fig = difference_figure("mnist", "val_acc", list(stats.values()))
    fit_figure(fig)
    # a panel per start, each on its own scale: the good start's A/A and guided cells, the bad start's guided cell
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["regime 100 · start default", "regime 100 · start learning_rate=0.01"]
    labels = [[t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes]
    assert labels == [["Guided (heuristic) (n=3)", "A/A (n=3)"], ["Guided (heuristic) (n=3)"]]  # bottom up
    assert outside_the_figure(fig) == []
    plt.close(fig)


def test_the_per_epoch_figures_pool_as_the_tables_do_a_panel_per_start_a_curve_per_cell(study, tmp_path):
    from storage.figures import decision_figure, hyperparameter_figure, objective_figure
    from storage.report import read_report_data

    with open_reader(study) as reader:
        (task,) = read_report_data(reader).tasks
    good, bad = task.panels
    assert (good.title, bad.title) == ("regime 100 · start default", "regime 100 · start learning_rate=0.01")
    assert [(c.label, c.seeds) for c in good.curves] == [("Baseline", 3), ("A/A", 3), ("Guided (heuristic)", 3)]
    assert [(c.label, c.seeds) for c in bad.curves] == [("Baseline", 3), ("Guided (heuristic)", 3)]
    # the bad start's baseline alone: finals 0.50, 0.40, 0.45 (pooled with the good start it would be 0.675)
    assert bad.curves[0].points["objective"][-1] == pytest.approx((2, 0.45, 0.40, 0.50))
    plt, fig = objective_figure(task)
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes if ax.get_visible()]
    assert legends == [["Baseline", "A/A", "Guided (heuristic)"], ["Baseline", "Guided (heuristic)"]]
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == [good.title, bad.title]
    first, second = ({line.get_label(): line.get_color() for line in ax.get_lines()} for ax in fig.axes[:2])
    assert first["Guided (heuristic)"] == second["Guided (heuristic)"] != first["A/A"]  # a cell keeps its colour
    plt.close(fig)
    plt, fig = hyperparameter_figure(task)
    titles = [ax.get_title().replace("\n", " ") for ax in fig.axes if ax.get_visible()]
    assert titles[0] == "regime 100 · start default: learning rate" and len(titles) == 2 * len(task.knobs)
    assert not any(t.get_text() == "none" for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
    plt.close(fig)
    plt, fig = decision_figure(task)
    titles = {ax.get_title().replace("\n", " ") for ax in fig.axes if ax.get_visible()}
    assert "regime 100 · start learning_rate=0.01 · Guided (heuristic) · seed 2" in titles and len(titles) == 6
    plt.close(fig)


def test_the_figures_name_the_setting_and_variant_and_draw_a_seed_once(tmp_path):
    from storage.report import read_report_data

    db = tmp_path / "v.duckdb"
    with duckdb.connect(str(db)) as con:
        migrate(con)
        buffer = RecordBuffer(con)
        add_run(buffer, "six", "baseline", "none", 0, [0.5, 0.6, 0.7, 0.8, 0.85, 0.9])
        add_run(buffer, "three-a", "baseline", "none", 0, [0.5, 0.6, 0.7])
        add_run(buffer, "three-b", "baseline", "none", 0, [0.5, 0.6, 0.75])  # supersedes three-a
        add_run(buffer, "drop", "guided", "heuristic", 0, [0.5, 0.6, 0.8], instructions=["raise dropout"])
        add_run(buffer, "lr", "guided", "heuristic", 0, [0.5, 0.6, 0.6], instructions=["lower"])
        buffer.add(started("going", "guided", "heuristic", 1, instructions=["lower"]))
        buffer.add(epoch_record("going", 1, 0.4))
        buffer.flush()
    with open_reader(db) as reader:
        (task,) = read_report_data(reader).tasks
    three, six = task.panels
    assert (three.title, six.title) == ("regime 100 · start default · epochs 3", "regime 100 · start default · epochs 6")
    assert [c.label for c in three.curves] == ['Baseline', 'Guided (heuristic; instructions=["lower"])',
                                               'Guided (heuristic; instructions=["raise dropout"])']  # fmt: skip
    assert three.curves[0].seeds == 1 and three.curves[0].points["objective"][-1] == (3, 0.75, 0.75, 0.75)
    assert [(r.label, r.seed, r.epochs) for r in three.running] == [('Guided (heuristic; instructions=["lower"])', 1,
                                                                     [1])]  # fmt: skip
    assert [c.label for c in six.curves] == ["Baseline"] and six.running == []


def test_the_difference_figure_draws_an_interval_that_rounding_put_beside_its_mean(tmp_path):
    db = tmp_path / "e.duckdb"
    with duckdb.connect(str(db)) as con:
        migrate(con)
        buffer = RecordBuffer(con)
        for seed in range(3):  # the same difference, 0.38, for every seed: mean 0.38000000000000006, CI (0.38, 0.38)
            add_run(buffer, f"b{seed}", "baseline", "none", seed, [0.3, 0.5])
            add_run(buffer, f"g{seed}", "guided", "heuristic", seed, [0.3, 0.88])
        buffer.flush()
    files, _ = write_report(db, tmp_path / "out")
    assert "paired_differences.png" in [f.name for f in files]


def test_the_published_results_are_what_the_report_renders_from_their_export(tmp_path):
    """docs/results.md and docs/paper_table.md must be a re-render of docs/results.csv by this code: a change to the
    report that alters the published tables fails here until the tables are rendered and committed again."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    files, _ = render_results([docs / "results.csv"], tmp_path)
    by_name = {f.name: f for f in files}
    assert by_name["results.md"].read_text() == (docs / "results.md").read_text()
    assert by_name["paper_table.md"].read_text() == (docs / "paper_table.md").read_text()


def test_rerun_seeds_sets_the_rerun_column_for_that_many_fresh_seeds_and_a_bad_count_is_one_line(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    report = subprocess.run(
        [sys.executable, "run.py", "report", "--results", "docs/results.csv", "--out", str(tmp_path), "--rerun-seeds", "5"],
        cwd=repo, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr

    def diabetes_llm_rerun(text: str) -> tuple[str, list[float]]:
        header = next(line for line in text.splitlines() if "Re-run lands in" in line)
        row = next(line for line in text.splitlines() if line.startswith("| full | default | Guided (llm) | 10 |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        return header, [float(x) for x in cells[7].strip("[]").split(",")]

    header_5, (low_5, high_5) = diabetes_llm_rerun((tmp_path / "results.md").read_text().split("## Task diabetes")[1])
    published = (repo / "docs" / "results.md").read_text().split("## Task diabetes")[1]
    header_10, (low_10, high_10) = diabetes_llm_rerun(published)
    assert "Re-run lands in (95 %), 5 seeds" in header_5 and "Re-run lands in (95 %) |" in header_10
    assert low_5 < low_10 < high_10 < high_5  # 5 fresh seeds' mean varies more than 10's: a wider interval
    zero = subprocess.run(
        [sys.executable, "run.py", "report", "--results", "docs/results.csv", "--out", str(tmp_path), "--rerun-seeds", "0"],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert zero.returncode == 2 and zero.stderr.strip() == "run.py report: error: --rerun-seeds must be at least 1, got 0"
