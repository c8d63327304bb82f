"""A database written before schema 4 (bus schema 1, MNIST only) keeps its answers after the migration."""

import json
import math

import duckdb
import pytest

from bus.messages import UpdateCommand
from storage import queries
from storage.recorder import RecordBuffer
from storage.report import write_report
from storage.schema import MIGRATIONS, migrate
from tests.storage.test_recorder import decision_record, regression_record, run_started

# The views as schema 3 shipped them (storage/schema.py before migration 4), to answer on the old tables.
V1_VIEWS = """
CREATE OR REPLACE VIEW run_results AS
SELECT r.run_id, r.pair_id, r.arm, r.regime, r.n_train, r.controller, r.seed, r.status,
       count(e.epoch) AS epochs_run,
       arg_max(e.val_acc, e.epoch) AS final_val_acc,
       max(e.val_acc) AS max_val_acc,
       arg_max(e.train_acc, e.epoch) AS final_train_acc
FROM runs r JOIN epochs e USING (run_id)
GROUP BY ALL;

-- The paper's table (section 3.1), averaged over seeds, completed runs only.
CREATE OR REPLACE VIEW paper_table AS
SELECT regime, n_train, arm, controller,
       count(*) AS n_seeds,
       avg(final_val_acc) AS final_val_acc, stddev_samp(final_val_acc) AS final_val_acc_std,
       avg(max_val_acc) AS max_val_acc, stddev_samp(max_val_acc) AS max_val_acc_std,
       avg(final_train_acc) AS train_acc, stddev_samp(final_train_acc) AS train_acc_std
FROM run_results
WHERE status = 'completed'
GROUP BY regime, n_train, arm, controller
ORDER BY n_train DESC, arm, controller;

-- How reliable is each controller / model: answers valid at the first try, repaired, fallen back.
CREATE OR REPLACE VIEW controller_reliability AS
SELECT d.controller, r.llm_model,
       count(*) AS decisions,
       avg(d.valid::INT) AS valid_first_try_rate,
       avg((NOT d.valid AND NOT d.fallback)::INT) AS repaired_rate,
       avg(d.fallback::INT) AS fallback_rate,
       avg(d.repair_attempts) AS mean_repair_attempts,
       avg((d.clamped <> '{}')::INT) AS clamped_rate,
       median(d.latency_ms) AS median_latency_ms,
       quantile_cont(d.latency_ms, 0.95) AS p95_latency_ms,
       avg(d.prompt_tokens) AS mean_prompt_tokens,
       avg(d.completion_tokens) AS mean_completion_tokens
FROM decisions d JOIN runs r USING (run_id)
GROUP BY d.controller, r.llm_model;

-- Each decision with the validation change over the epoch it governed, and the verdict on it.
CREATE OR REPLACE VIEW decision_outcomes AS
SELECT d.run_id, d.epoch, d.controller, d.valid, d.repair_attempts, d.fallback, d.applied,
       d.command, d.notes,
       e0.lr AS lr_before, CAST(d.command->>'learning_rate' AS DOUBLE) AS lr_after,
       e0.dropout AS dropout_before, CAST(d.command->>'dropout' AS DOUBLE) AS dropout_after,
       e0.val_acc AS val_acc_before, e1.val_acc AS val_acc_after,
       e1.val_acc - e0.val_acc AS val_acc_change,
       rf.verdict, rf.text AS reflection
FROM decisions d
JOIN epochs e0 ON e0.run_id = d.run_id AND e0.epoch = d.epoch
LEFT JOIN epochs e1 ON e1.run_id = d.run_id AND e1.epoch = d.epoch + 1
LEFT JOIN reflections rf ON rf.run_id = d.run_id AND rf.about_epoch = d.epoch;
"""


V1_RUNS = [
    # run_id, pair_id, arm, regime, n_train, controller, seed, status
    ("b0", "p0", "baseline", "1pct", 600, "none", 0, "completed"),
    ("g0", "p0", "guided", "1pct", 600, "heuristic", 0, "completed"),
    ("b1", "p1", "baseline", "1pct", 600, "none", 1, "completed"),
    ("g1", "p1", "guided", "1pct", 600, "heuristic", 1, "completed"),
    ("g2", "p2", "guided", "100", 100, "llm", 0, "running"),
]
# per run: (train_loss, train_acc, val_loss, val_acc, lr, dropout) per epoch
V1_EPOCHS = {
    "b0": [(1.0, 0.6, 1.1, 0.50, 1e-3, 0.25), (0.5, 0.8, 0.6, 0.70, 1e-3, 0.25), (0.3, 0.9, 0.5, 0.65, 1e-3, 0.25)],
    "g0": [(1.0, 0.6, 1.1, 0.52, 1e-3, 0.25), (0.5, 0.8, 0.6, 0.71, 5e-4, 0.3), (0.3, 0.95, 0.5, 0.74, 5e-4, 0.3)],
    "b1": [(1.0, 0.5, 1.2, 0.40, 1e-3, 0.25), (0.6, 0.7, 0.7, 0.60, 1e-3, 0.25), (0.4, 0.85, 0.6, 0.62, 1e-3, 0.25)],
    "g1": [
        (1.0, 0.5, 1.2, 0.41, 1e-3, 0.25),
        (0.6, 0.7, 0.7, float("nan"), 1e-3, 0.25),
        (0.4, 0.8, 0.6, 0.66, 1e-3, 0.2),
    ],
    "g2": [(1.0, 0.5, 1.2, 0.30, 1e-3, 0.25)],
}
# v1 commands: the knobs at the top level
V1_COMMANDS = {
    ("g0", 1): {
        "dropout": 0.3,
        "learning_rate": 5e-4,
        "alpha": 0.4,
        "weight_modulation": None,
        "weight_ops": None,
        "rationale": "plateau",
    },
    ("g0", 2): {
        "dropout": 0.3,
        "learning_rate": 5e-4,
        "alpha": 0.4,
        "weight_modulation": None,
        "weight_ops": [{"layer": "fc.3.weight", "op": "scale", "value": 1.02, "seed": 0}],
        "rationale": "keep",
    },
    ("g1", 1): {"dropout": 0.25, "learning_rate": 1e-3, "alpha": 0.5, "rationale": "keep"},
    ("g1", 2): {"dropout": 0.2, "learning_rate": 1e-3, "alpha": 0.5, "rationale": "less dropout"},
}


def v1_database(path) -> duckdb.DuckDBPyConnection:
    """A file at schema 3 with the views of then, holding rows as the recorder of bus schema 1 wrote them."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    for version, ddl in MIGRATIONS[:3]:
        con.execute(ddl)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
    con.execute(V1_VIEWS)
    for run_id, pair_id, arm, regime, n_train, controller, seed, status in V1_RUNS:
        con.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, NULL, ?, 3, ?, NULL, now(), NULL, ?)",
            [run_id, pair_id, arm, regime, n_train, controller, seed, status, json.dumps({"fingerprint": run_id})],
        )
        for epoch, (tl, ta, vl, va, lr, dropout) in enumerate(V1_EPOCHS[run_id], 1):
            con.execute(
                "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0.5, 1.0, ?, '{}', '{}')",
                [run_id, epoch, tl, ta, vl, va, lr, dropout, [va] * 10],
            )
    for (run_id, epoch), command in V1_COMMANDS.items():
        con.execute(
            "INSERT INTO decisions VALUES (?, ?, 'heuristic', 'p', 'o', ?, ?, 0, false, NULL, ?, '[]', true, 12.5, "
            "100, 20)",
            [run_id, epoch, json.dumps(command), epoch == 1, "{}" if epoch == 1 else '{"dropout": 0.3}'],
        )
    con.execute(
        "INSERT INTO reflections VALUES ('g0', 2, 1, 0.52, 0.71, 'beneficial', 'up', 'rule', 'beneficial'), "
        "('g0', 3, 2, 0.71, 0.74, 'neutral', 'flat', 'llm', 'beneficial')"
    )
    return con


OLD_QUERIES = {
    "run_results": "SELECT * FROM run_results ORDER BY run_id",
    "paper_table": "SELECT * FROM paper_table",
    "controller_reliability": "SELECT * FROM controller_reliability ORDER BY controller",
    "decision_outcomes": "SELECT * FROM decision_outcomes ORDER BY run_id, epoch",
}


def answers(con, view: str, columns: list[str] | None = None):
    sql = OLD_QUERIES[view]
    if columns is not None:
        sql = sql.replace("*", ", ".join(columns), 1)
    cursor = con.execute(sql)
    return [d[0] for d in cursor.description], cursor.fetchall()


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-15)
    return a == b


def test_a_schema_3_database_migrates_and_every_old_view_column_answers_as_before(tmp_path):
    path = tmp_path / "v1.duckdb"
    con = v1_database(path)
    before = {view: answers(con, view) for view in OLD_QUERIES}
    assert before["paper_table"][1][0][4] == 2  # the fixture is not empty: two seeds in the 1pct row
    assert migrate(con) == MIGRATIONS[-1][0]
    con.close()
    con = duckdb.connect(str(path))  # the migration is checkpointed: it survives a reopen
    assert migrate(con) == MIGRATIONS[-1][0]
    for view, (columns, rows) in before.items():
        new_columns, new_rows = answers(con, view, columns)
        assert new_columns == columns
        assert len(new_rows) == len(rows), view
        for old, new in zip(rows, new_rows):
            assert all(same(a, b) for a, b in zip(old, new)), f"{view}: {old} became {new}"

    # backfilled: every old row is an MNIST row with val_acc as its objective
    assert con.execute("SELECT DISTINCT task, objective, mode FROM runs").fetchall() == [("mnist", "val_acc", "max")]
    epoch = con.execute(
        "SELECT objective, metrics, hyperparameters, vectors FROM epochs WHERE run_id = 'g0' AND epoch = 2"
    ).fetchall()[0]
    assert epoch[0] == 0.71
    assert json.loads(epoch[1]) == {"train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.6, "val_acc": 0.71}
    assert json.loads(epoch[2]) == {"dropout": 0.3, "learning_rate": 5e-4}
    assert json.loads(epoch[3]) == {"per_class_val_acc": [0.71] * 10}
    reflections = con.execute("SELECT objective, objective_before, objective_after FROM reflections ORDER BY epoch")
    assert reflections.fetchall() == [
        ("val_acc", 0.52, 0.71), ("val_acc", 0.71, 0.74)
    ]  # fmt: skip

    # the new columns answer for old rows too
    g1 = con.execute(
        "SELECT final_objective, best_objective, best_epoch, max_val_acc FROM run_results WHERE run_id = 'g1'"
    ).fetchall()[0]
    assert g1[:3] == (0.66, 0.66, 3) and math.isnan(
        g1[3]
    )  # the NaN of epoch 2 is never the best (max_val_acc says NaN)
    outcome = con.execute(
        "SELECT lr_after, dropout_after, improvement, hyperparameters_after, hyperparameters_changed "
        "FROM decision_outcomes WHERE run_id = 'g0' ORDER BY epoch"
    ).fetchall()
    assert [(lr, d, round(i, 6), json.loads(h), c) for lr, d, i, h, c in outcome] == [
        (5e-4, 0.3, 0.19, {"dropout": 0.3, "learning_rate": 5e-4}, True),
        (5e-4, 0.3, 0.03, {"dropout": 0.3, "learning_rate": 5e-4}, False),
    ]
    assert con.execute("SELECT task, decisions FROM controller_reliability").fetchall() == [("mnist", 4)]
    task_table = con.execute("SELECT task, regime, arm, n_seeds, final_objective, best_objective FROM task_table")
    assert [r[:4] + (round(r[4], 6), round(r[5], 6)) for r in task_table.fetchall()] == [
        ("mnist", "1pct", "baseline", 2, 0.635, 0.66),
        ("mnist", "1pct", "guided", 2, 0.70, 0.70),
    ]

    # the commands recorded then replay now, in the named-knob form
    commands = queries.recorded_commands(con, "g0")
    assert list(commands) == [1, 2]
    assert commands[1] == UpdateCommand(hyperparameters={"dropout": 0.3, "learning_rate": 5e-4}, alpha=0.4,
                                        rationale="plateau")  # fmt: skip
    assert commands[2].weight_ops[0].value == 1.02 and commands[2].hyperparameters["learning_rate"] == 5e-4

    # and the recorder of schema 2 writes into the migrated file beside the old rows
    buffer = RecordBuffer(con)
    buffer.add(run_started("d0", task="diabetes", objective="val_rmse", mode="min", regime="full", budget=300))
    buffer.add(regression_record("d0", 1, 60.0))
    buffer.add(decision_record("d0", 1, 2e-3, dropout=None, weight_decay=1e-4))
    buffer.flush()
    assert con.execute("SELECT count(*), count(DISTINCT task) FROM run_results").fetchall() == [(6, 2)]
    assert con.execute("SELECT count(*) FROM paper_table").fetchall() == [(2,)]  # MNIST only
    con.close()


def test_migration_4_backfills_json_without_null_keys_for_partial_old_rows(tmp_path):
    con = duckdb.connect(str(tmp_path / "p.duckdb"))
    for _, ddl in MIGRATIONS[:3]:
        con.execute(ddl)
    con.execute("INSERT INTO epochs (run_id, epoch, val_acc, lr) VALUES ('x', 1, 0.5, 0.01)")
    con.execute(MIGRATIONS[3][1])
    assert con.execute("SELECT metrics, hyperparameters, vectors FROM epochs").fetchall() == [
        ('{"val_acc":0.5}', '{"learning_rate":0.01}', "{}")
    ]
    con.close()


def test_the_report_of_an_unmigrated_file_migrates_it_once_and_shows_the_papers_table(tmp_path):
    path = tmp_path / "old.duckdb"
    v1_database(path).close()
    files, notes = write_report(path, tmp_path / "report")
    assert [f.name for f in files] == [
        "results.md",
        "paper_table.md",
        "results.csv",
        "paired_differences.png",
        "validation_accuracy.png",
        "hyperparameters.png",
        "decisions.png",
    ]
    assert notes == []
    text = files[0].read_text()
    assert "| 1pct | 600 | Baseline | 2 | 0.6350 ± 0.0212 | 0.6600 ± 0.0566 | 0.8750 ± 0.0354 |" in text
    assert "| g2 | mnist | 100 | guided | llm | 0 | 1/3 | val_acc | 0.3000 | 0.3000 |" in text  # still running
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT max(version) FROM schema_version").fetchall() == [(MIGRATIONS[-1][0],)]


def test_a_schema_7_database_gains_the_reading_columns_empty(tmp_path):
    con = duckdb.connect(str(tmp_path / "v7.duckdb"))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    for version, ddl in MIGRATIONS[:7]:
        con.execute(ddl)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
    con.execute("INSERT INTO instructions (instruction_id, run_id, text, source, received_at) "
                "VALUES ('r-0', 'r', 'halve the learning rate', 'flag', now())")  # fmt: skip
    assert migrate(con) == MIGRATIONS[-1][0]
    row = con.execute("SELECT text, read_as, intent, moves, confidence, reader FROM instructions").fetchall()
    assert row == [("halve the learning rate", None, None, None, None, None)]
    columns = [c[0] for c in con.execute("DESCRIBE decisions").fetchall()]
    assert "overridden_proposal" in columns
    con.close()


def test_a_schema_8_database_gains_rollback_to_empty(tmp_path):
    con = duckdb.connect(str(tmp_path / "v8.duckdb"))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    for version, ddl in MIGRATIONS[:8]:
        con.execute(ddl)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
    con.execute("INSERT INTO decisions (run_id, epoch, controller, command, valid, repair_attempts, fallback, applied) "
                "VALUES ('r', 1, 'heuristic', '{}', true, 0, false, true)")  # fmt: skip
    assert migrate(con) == len(MIGRATIONS)
    assert con.execute("SELECT epoch, rollback_to FROM decisions").fetchall() == [(1, None)]


def test_a_schema_8_database_gains_the_cost_columns_null_and_run_costs_sums_them(tmp_path):
    con = duckdb.connect(str(tmp_path / "v8.duckdb"))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    for version, ddl in [m for m in MIGRATIONS if m[0] <= 8]:
        con.execute(ddl)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
    insert = ("INSERT INTO decisions (run_id, epoch, controller, command, valid, repair_attempts, fallback, applied, "
              "prompt_tokens, completion_tokens) VALUES (?, ?, 'llm', '{}', true, 0, false, true, ?, ?)")  # fmt: skip
    con.execute(insert, ["old", 1, 100, 10])
    migrate(con)
    con.execute(insert.replace("completion_tokens)", "completion_tokens, llm_calls, wait_ms, cost_usd)")
                .replace("?, ?)", "?, ?, ?, ?, ?)"), ["new", 1, 100, 10, 2, 1500.0, 0.25])  # fmt: skip
    con.execute(insert.replace("completion_tokens)", "completion_tokens, llm_calls, wait_ms, cost_usd)")
                .replace("?, ?)", "?, ?, ?, ?, ?)"), ["new", 2, 50, 5, 1, 500.0, 0.5])  # fmt: skip
    rows = con.execute("SELECT * FROM run_costs ORDER BY run_id").fetchall()
    assert [c[0] for c in con.description] == ["run_id", "decisions", "llm_calls", "prompt_tokens",
                                               "completion_tokens", "wait_s", "cost_usd"]  # fmt: skip
    assert rows == [("new", 2, 2 + 1, 150, 15, 2.0, 0.75), ("old", 1, None, 100, 10, None, None)]
    con.close()
