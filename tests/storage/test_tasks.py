"""Views and the report for a task other than MNIST: a regression objective to minimise, beside MNIST."""

import json
import time
from pathlib import Path

import duckdb
import pytest

from bus.messages import RunFinished
from storage import queries
from storage.reader import open_reader
from storage.recorder import RecordBuffer
from storage.report import read_report_data, results_markdown, results_text, write_report
from storage.schema import migrate
from tests.storage.test_recorder import (
    decision_record,
    epoch_record,
    reflection_record,
    regression_record,
    run_started,
)

# val_rmse per epoch (lower is better): per seed, baseline and guided
RMSE = {
    0: {"baseline": [70.0, 60.0, 58.0, 59.0], "guided": [70.0, 57.0, 55.0, 56.5]},
    1: {"baseline": [72.0, 62.0, 61.0, 61.0], "guided": [71.0, 59.0, 60.0, 58.0]},
}
OLS = {0: 54.0, 1: 56.0}  # the least-squares reference per seed (its data split)


def fill(con, with_mnist: bool = True) -> None:
    buffer = RecordBuffer(con)
    for seed, arms in RMSE.items():
        for arm, curve in arms.items():
            run_id = f"d-{arm}{seed}"
            buffer.add(run_started(run_id, arm=arm, seed=seed, task="diabetes", objective="val_rmse", mode="min",
                                   regime="full", budget=300))  # fmt: skip
            for epoch, rmse in enumerate(curve, 1):
                lr = 1e-3 if arm == "baseline" or epoch < 2 else 5e-4
                buffer.add(regression_record(run_id, epoch, rmse, lr=lr, ols=OLS[seed]))
                if arm == "guided":  # from epoch 2 on the learning rate it set after epoch 1
                    buffer.add(decision_record(run_id, epoch, 5e-4, dropout=None, weight_decay=1e-4))
            if arm == "guided":
                buffer.add(reflection_record(run_id, 2, curve[0], curve[1], objective="val_rmse"))
            buffer.add(RunFinished(run_id=run_id, status="completed", finished_at=time.time()))
    if with_mnist:
        for arm in ("baseline", "guided"):
            buffer.add(run_started(f"m-{arm}", arm=arm))
            for epoch, acc in enumerate((0.5, 0.8, 0.9), 1):
                buffer.add(epoch_record(f"m-{arm}", epoch, acc))
                if arm == "guided":
                    buffer.add(decision_record(f"m-{arm}", epoch, 1e-3))
            buffer.add(RunFinished(run_id=f"m-{arm}", status="completed", finished_at=time.time()))
    buffer.add(run_started("d-going", arm="guided", seed=2, task="diabetes", objective="val_rmse", mode="min",
                           regime="full", budget=300))  # fmt: skip
    buffer.add(regression_record("d-going", 1, 80.0))
    buffer.add(regression_record("d-going", 2, 65.0))
    buffer.flush()


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "tasks.duckdb"
    with duckdb.connect(str(path)) as con:
        migrate(con)
        fill(con)
    return path


def test_a_min_task_reads_its_best_as_the_minimum_and_improvement_as_a_decrease(db):
    with duckdb.connect(str(db), read_only=True) as con:
        results = con.execute(
            "SELECT run_id, final_objective, best_objective, best_epoch, final_val_acc, reference, reference_objective "
            "FROM run_results WHERE task = 'diabetes' ORDER BY run_id"
        ).fetchall()
        assert results == [
            ("d-baseline0", 59.0, 58.0, 3, None, "ols", 54.0),
            ("d-baseline1", 61.0, 61.0, 3, None, "ols", 56.0),  # a tie: the earliest epoch that reached it
            ("d-going", 65.0, 65.0, 2, None, "ols", 55.0),
            ("d-guided0", 56.5, 55.0, 3, None, "ols", 54.0),
            ("d-guided1", 58.0, 58.0, 4, None, "ols", 56.0),
        ]
        table = con.execute(
            "SELECT arm, objective, mode, n_seeds, final_objective, final_objective_std, best_objective, "
            "best_objective_std, mean_best_epoch FROM task_table WHERE task = 'diabetes'"
        ).fetchall()
        assert table == [
            ("baseline", "val_rmse", "min", 2, 60.0, pytest.approx(2**0.5), 59.5, pytest.approx(4.5**0.5), 3.0),
            ("guided", "val_rmse", "min", 2, 57.25, pytest.approx(1.125**0.5), 56.5, pytest.approx(4.5**0.5), 3.5),
        ]
        references = con.execute("SELECT task, regime, reference, label, n_seeds, value FROM task_references")
        assert references.fetchall() == [("diabetes", "full", "ols", "least squares", 2, 55.0)]
        # the paper's table stays MNIST's
        assert con.execute("SELECT arm, n_seeds FROM paper_table ORDER BY arm").fetchall() == [
            ("baseline", 1), ("guided", 1)
        ]  # fmt: skip
        outcomes = con.execute(
            "SELECT epoch, objective_before, objective_after, objective_change, improvement, lr_before, lr_after, "
            "dropout_after, json_extract(hyperparameters_after, '$.weight_decay')::DOUBLE, hyperparameters_changed, "
            "verdict FROM decision_outcomes WHERE run_id = 'd-guided0' ORDER BY epoch"
        ).fetchall()
        assert outcomes == [
            (1, 70.0, 57.0, -13.0, 13.0, 1e-3, 5e-4, None, 1e-4, True, "beneficial"),  # down is better
            (2, 57.0, 55.0, -2.0, 2.0, 5e-4, 5e-4, None, 1e-4, False, None),
            (3, 55.0, 56.5, 1.5, -1.5, 5e-4, 5e-4, None, 1e-4, False, None),  # up is worse
            (4, 56.5, None, None, None, 5e-4, 5e-4, None, 1e-4, False, None),
        ]
        reliability = con.execute("SELECT task, controller, decisions FROM controller_reliability ORDER BY task")
        assert reliability.fetchall() == [("diabetes", "heuristic", 8), ("mnist", "heuristic", 3)]
        epoch = con.execute(
            "SELECT train_loss, train_acc, val_acc, lr, dropout, per_class_val_acc, metrics->>'ols_val_rmse' "
            "FROM epochs WHERE run_id = 'd-guided0' AND epoch = 2"
        ).fetchall()
        assert epoch == [(3000.0, None, None, 5e-4, None, None, "54.0")]  # MNIST columns only where the name exists
        reflection = con.execute(
            "SELECT objective, objective_before, objective_after, prev_val_acc, val_acc FROM reflections "
            "WHERE run_id = 'd-guided0'"
        ).fetchall()
        assert reflection == [("val_rmse", 70.0, 57.0, None, None)]


def test_the_report_of_a_min_task_has_its_own_table_figures_and_reference(db, tmp_path):
    with open_reader(db) as reader:
        data = read_report_data(reader)
    assert [t.task for t in data.tasks] == ["mnist", "diabetes"]
    diabetes = data.task("diabetes")
    assert diabetes.knobs == ["learning_rate", "weight_decay"] and diabetes.regimes == ["full"]
    (panel,) = diabetes.panels
    assert panel.title == "regime full · start default" and [c.label for c in panel.running] == ["Guided (heuristic)"]
    assert panel.running[0].values == {"objective": [80.0, 65.0], "learning_rate": [1e-3, 1e-3],
                                          "weight_decay": [1e-4, 1e-4]}  # fmt: skip
    assert [(c.label, c.seeds) for c in panel.curves] == [("Baseline", 2), ("Guided (heuristic)", 2)]
    guided = panel.curves[1].points["objective"]
    assert guided[1] == (2, 58.0, 57.0, 59.0)  # epoch, mean, min, max over the two seeds

    files, notes = write_report(db, tmp_path / "report")
    assert [f.name for f in files] == [
        "results.md",
        "paper_table.md",
        "results.csv",
        "paired_differences.png",
        "diabetes_paired_differences.png",
        "validation_accuracy.png",
        "hyperparameters.png",
        "decisions.png",
        "diabetes_val_rmse.png",
        "diabetes_hyperparameters.png",
        "diabetes_decisions.png",
    ]
    assert notes == []
    for png in files[3:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = files[0].read_text()
    assert "diabetes" not in files[1].read_text()  # paper_table.md: MNIST's section only
    assert "## Task mnist: val_acc, higher is better" in text
    assert "| 100 | 100 | Baseline | 1 | 0.9000 | 0.9000 | 0.9000 |" in text  # the paper's table for MNIST
    assert "## Task diabetes: val_rmse, lower is better" in text
    assert "| Regime | Budget | Model | Seeds | Final val_rmse | Best val_rmse | Best epoch |" in text
    lines = text.splitlines()
    baseline = lines.index("| full | 300 | Baseline | 2 | 60.0000 ± 1.4142 | 59.5000 ± 2.1213 | 3.0 |")
    assert lines[baseline + 1] == "| full | 300 | Guided (heuristic) | 2 | 57.2500 ± 1.0607 | 56.5000 ± 2.1213 | 3.5 |"
    assert (
        lines[baseline + 2] == "| full | 300 | Reference: least squares | 2 | 55.0000 ± 1.4142 | 55.0000 ± 1.4142 |  |"
    )
    assert "| d-going | diabetes | full | guided | heuristic | 2 | 2/3 | val_rmse | 65.0000 | 65.0000 |" in text


def test_the_report_draws_the_reference_as_a_line_and_names_the_direction(db):
    from storage.report import objective_figure

    with open_reader(db) as reader:
        diabetes = read_report_data(reader).task("diabetes")
    plt, fig = objective_figure(diabetes)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "validation RMSE (lower is better)"
    assert fig.get_suptitle().replace("\n", " ").startswith("Validation RMSE per epoch, lower is better")
    reference = [line for line in ax.get_lines() if line.get_label().startswith("least squares")]
    assert len(reference) == 1 and list(reference[0].get_ydata()) == [55.0, 55.0]
    assert reference[0].get_label() == "least squares (reference, mean of 2 seeds)"
    plt.close(fig)


def test_results_after_a_run_print_one_table_per_task(db):
    with duckdb.connect(str(db), read_only=True) as con:
        rows = queries.run_results(con, ["m-guided", "d-guided1", "d-baseline1", "m-baseline", "nope"])
    assert [r["run_id"] for r in rows] == ["d-baseline1", "d-guided1", "m-baseline", "m-guided"]
    text = results_markdown(rows)
    assert text == results_text(db, ["m-guided", "d-guided1", "d-baseline1", "m-baseline"])
    assert text.splitlines() == [
        "Task diabetes: val_rmse, lower is better",
        "",
        "| Regime | Seed | Model | Controller | Status | Epochs | Final val_rmse | Best val_rmse | Best Epoch |",
        "|---|---|---|---|---|---|---|---|---|",
        "| full | 1 | baseline | none | completed | 4 | 61.0000 | 61.0000 | 3 |",
        "| full | 1 | guided | heuristic | completed | 4 | 58.0000 | 58.0000 | 4 |",
        "| full | 1 | reference: least squares |  |  |  | 56.0000 | 56.0000 |  |",
        "",
        "Task mnist: val_acc, higher is better",
        "",
        "| Regime | Seed | Model | Controller | Status | Epochs | Final Val Acc | Max Val Acc | Train Acc |",
        "|---|---|---|---|---|---|---|---|---|",
        "| 100 | 0 | baseline | none | completed | 3 | 0.9000 | 0.9000 | 0.9000 |",
        "| 100 | 0 | guided | heuristic | completed | 3 | 0.9000 | 0.9000 | 0.9000 |",
    ]


def test_queries_compare_a_replay_and_discard_epochs_for_a_resume(db):
    with duckdb.connect(str(db)) as con:
        same = queries.compare_runs(con, "d-guided0", "d-guided0")
        assert (same.epochs, same.objective, same.objective_delta, same.hyperparameter_epochs) == (
            4,
            "val_rmse",
            0.0,
            0,
        )
        other = queries.compare_runs(con, "d-guided0", "d-baseline0")
        assert other.objective_delta == 3.0 and other.hyperparameter_epochs == 3  # lr 5e-4 against 1e-3 from epoch 2
        assert other.metric_deltas["val_rmse"] == 3.0 and other.largest_other() == ("val_r2", 0.0)
        run = queries.recorded_run(con, "d-guided1")
        assert (run.task, run.objective, run.mode, run.n_train, run.config) == ("diabetes", "val_rmse", "min", 300,
                                                                                  {"epochs": 3})  # fmt: skip
        assert queries.recorded_run(con, "nope") is None
        commands = queries.recorded_commands(con, "d-guided1")
        assert sorted(commands) == [1, 2, 3, 4] and commands[1].hyperparameters == {"learning_rate": 5e-4,
                                                                                    "weight_decay": 1e-4}  # fmt: skip
        assert queries.completed_fingerprints(con) == {}  # these runs recorded none
        pairs = queries.recorded_pairs(con, task="diabetes")
        assert {p.run_id for p in pairs} == {"d-baseline0", "d-guided0", "d-baseline1", "d-guided1", "d-going"}
        dropped = queries.discard_epochs_after(con, "d-guided1", 2, "resumed after epoch 2")
        assert dropped == {"epochs": 2, "decisions": 2, "reflections": 0}
        resumed = con.execute("SELECT status, status_reason, finished_at FROM runs WHERE run_id = 'd-guided1'")
        assert resumed.fetchall() == [
            ("running", "resumed after epoch 2", None)
        ]  # fmt: skip
        assert con.execute("SELECT max(epoch) FROM epochs WHERE run_id = 'd-guided1'").fetchall() == [(2,)]


def test_recorded_commands_of_either_schema_become_update_commands():
    v1 = {"dropout": 0.3, "learning_rate": 5e-4, "alpha": 0.4, "rationale": "r"}
    command = queries.command_from_record(json.dumps(v1))
    assert command.hyperparameters == {"dropout": 0.3, "learning_rate": 5e-4} and command.alpha == 0.4
    v2 = {"hyperparameters": {"ent_coef": 0.01}, "alpha": 0.5}
    assert queries.command_from_record(v2).hyperparameters == {"ent_coef": 0.01}
    with pytest.raises(ValueError):
        queries.command_from_record({"alpha": 0.5, "learning_rate": 1e-3, "bogus": 1})
