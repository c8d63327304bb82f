"""Every SQL statement that code outside ``storage/`` runs, as named functions.

Planning (``--replay``, ``--resume``, joining recorded pairs, skipping completed runs) and the results
printed after a run read the database through these, so the SQL lives next to the schema it depends on
and changes with it. Each function takes a *source*: a DuckDB connection, or a
:class:`storage.reader.Reader` (a read-only connection or the live recorder). The one function that
writes (:func:`discard_epochs_after`) takes a connection only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from bus.messages import UpdateCommand
from storage.schema import REFERENCE_PREFIXES

Source = Any  # duckdb.DuckDBPyConnection | storage.reader.Reader


def rows(source: Source, sql: str, params: Sequence = ()) -> list[tuple]:
    """The rows of ``sql`` with ``params`` bound, from a connection or a reader."""
    if isinstance(source, duckdb.DuckDBPyConnection):
        return source.execute(sql, list(params)).fetchall()
    return [tuple(row) for row in source.query(sql, list(params)).rows]


def _json(value: Any) -> Any:
    """A JSON column's value, parsed (DuckDB returns JSON as text; the live recorder may too)."""
    return json.loads(value) if isinstance(value, str) else value


# --------------------------------------------------------------------------- one recorded run


@dataclass(frozen=True)
class RecordedRun:
    """A row of ``runs`` with its config parsed. ``n_train``: training examples, or environment steps
    per epoch (the run's budget)."""

    run_id: str
    pair_id: str
    arm: str
    task: str | None
    objective: str | None
    mode: str | None
    regime: str
    n_train: int
    controller: str
    llm_model: str | None
    seed: int
    epochs: int
    status: str
    config: dict


def recorded_run(source: Source, run_id: str) -> RecordedRun | None:
    """The run ``run_id``, or None if the database has no such run."""
    found = rows(
        source,
        "SELECT run_id, pair_id, arm, task, objective, mode, regime, n_train, controller, llm_model, seed, epochs, "
        "status, config FROM runs WHERE run_id = ?",
        [run_id],
    )
    if not found:
        return None
    *head, config = found[0]
    return RecordedRun(*head, config=_json(config))


def command_from_record(data: dict | str) -> UpdateCommand:
    """The :class:`UpdateCommand` a ``decisions.command`` value holds, in either format it was recorded in.

    Schema 2 commands name their knobs under ``hyperparameters``; a command recorded before (bus schema 1,
    MNIST only) has ``dropout`` and ``learning_rate`` at its top level, and becomes
    ``hyperparameters={"dropout": .., "learning_rate": ..}`` with everything else kept. Raises pydantic's
    ValidationError for anything else.
    """
    data = dict(_json(data))
    if "hyperparameters" not in data:
        data["hyperparameters"] = {name: data.pop(name) for name in ("dropout", "learning_rate") if name in data}
    return UpdateCommand.model_validate(data)


def recorded_commands(source: Source, run_id: str) -> dict[int, UpdateCommand]:
    """epoch -> the command applied after that epoch of run ``run_id`` (as ``--replay`` applies them again),
    in epoch order: an asynchronous decision under the epoch it was applied after (``applied_epoch``); one never
    applied (the decision after the last epoch, or an asynchronous one answered only then) under the run's last
    decision epoch, where the replay does not apply it either, unless a command was applied there; commands
    recorded in the schema 1 format are converted (:func:`command_from_record`)."""
    recorded = rows(source, "SELECT epoch, applied_epoch, command FROM decisions WHERE run_id = ? "
                            "ORDER BY applied_epoch IS NULL, coalesce(applied_epoch, epoch)", [run_id])  # fmt: skip
    last = max((max(epoch, applied or 0) for epoch, applied, _ in recorded), default=0)
    commands: dict[int, UpdateCommand] = {}
    for epoch, applied_epoch, command in recorded:
        commands.setdefault(last if applied_epoch is None else applied_epoch, command_from_record(command))
    return dict(sorted(commands.items()))


RESUMED_TABLES = ("epochs", "decisions", "reflections")


def discard_epochs_after(con: duckdb.DuckDBPyConnection, run_id: str, epoch: int, reason: str) -> dict[str, int]:
    """Before a resume: in one transaction, delete run ``run_id``'s rows of epochs after ``epoch`` (they run
    again, and their decisions may differ) and mark the run running with ``reason``. Returns the rows
    deleted per table. Raises duckdb.Error (rolled back) if the database refuses."""
    dropped = {}
    con.execute("BEGIN TRANSACTION")
    try:
        for table in RESUMED_TABLES:
            where = f"FROM {table} WHERE run_id = ? AND epoch > ?"
            dropped[table] = con.execute(f"SELECT count(*) {where}", [run_id, epoch]).fetchall()[0][0]
            con.execute(f"DELETE {where}", [run_id, epoch]).fetchall()
        con.execute(
            "UPDATE runs SET status = 'running', status_reason = ?, finished_at = NULL WHERE run_id = ?",
            [reason, run_id],
        ).fetchall()
        con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:  # the failed statement already ended the transaction
            pass
        raise
    return dropped


# --------------------------------------------------------------------------- replay against its original


@dataclass
class RunComparison:
    """How closely run ``b`` (a replay) matched run ``a`` epoch by epoch.

    ``objective_delta``: the largest |a - b| of the objective (None when no epoch pairs up);
    ``metric_deltas``: the largest |a - b| per metric both report (inf where one is NaN and the other not);
    ``hyperparameter_epochs``: epochs whose knob values differ in any knob."""

    a: str
    b: str
    objective: str
    epochs: int = 0
    objective_delta: float | None = None
    metric_deltas: dict[str, float] = field(default_factory=dict)
    hyperparameter_epochs: int = 0

    def largest_other(self) -> tuple[str, float] | None:
        """The metric other than the objective that differs most, with its delta."""
        others = [(d, name) for name, d in self.metric_deltas.items() if name != self.objective]
        if not others:
            return None
        delta, name = max(others)
        return name, delta


def _delta(x: float | None, y: float | None) -> float | None:
    if x is None or y is None:
        return None
    if math.isnan(x) or math.isnan(y):
        return 0.0 if math.isnan(x) and math.isnan(y) else math.inf
    return abs(x - y)


def compare_runs(source: Source, a: str, b: str) -> RunComparison:
    """Run ``b``'s epochs against run ``a``'s, epoch by epoch (see :class:`RunComparison`)."""
    objective = rows(source, "SELECT coalesce(any_value(objective), 'val_acc') FROM runs WHERE run_id = ?", [a])
    comparison = RunComparison(a, b, objective[0][0] if objective else "val_acc")
    for _, obj_a, obj_b, metrics_a, metrics_b, hyper_a, hyper_b in rows(
        source,
        """
        SELECT x.epoch, x.objective, y.objective, x.metrics, y.metrics, x.hyperparameters, y.hyperparameters
        FROM epochs x JOIN epochs y ON x.epoch = y.epoch WHERE x.run_id = ? AND y.run_id = ? ORDER BY x.epoch
        """,
        [a, b],
    ):
        comparison.epochs += 1
        d = _delta(obj_a, obj_b)
        if d is not None:
            comparison.objective_delta = max(d, comparison.objective_delta or 0.0)
        metrics_a, metrics_b = _json(metrics_a) or {}, _json(metrics_b) or {}
        for name in metrics_a.keys() & metrics_b.keys():
            d = _delta(metrics_a[name], metrics_b[name])
            if d is not None:
                comparison.metric_deltas[name] = max(d, comparison.metric_deltas.get(name, 0.0))
        if (_json(hyper_a) or {}) != (_json(hyper_b) or {}):
            comparison.hyperparameter_epochs += 1
    return comparison


# --------------------------------------------------------------------------- planning a sweep


@dataclass(frozen=True)
class PairRow:
    """A recorded run as sweep planning sees it: what makes two runs a pair, and its ids."""

    task: str | None
    regime: str
    seed: int
    epochs: int
    task_options: dict[str, Any]  # the trainer's task options (schema 1 runs: their batch size)
    pair_id: str
    run_id: str
    start: dict[str, float] = field(default_factory=dict)  # the knob values it started from (--start), if given


def recorded_pairs(source: Source, task: str | None = None) -> list[PairRow]:
    """Every recorded run that is not a replay, earliest first (of task ``task`` only, when given)."""
    sql = (
        "SELECT task, regime, seed, epochs, coalesce(config->'trainer'->'task_options', "
        "json_object('batch_size', TRY_CAST(config->'trainer'->>'batch_size' AS INTEGER))), pair_id, run_id, "
        "config->'experiment'->'start' FROM runs WHERE controller <> 'replay'"
    )
    params: list = []
    if task is not None:
        sql += " AND task = ?"
        params.append(task)
    found = rows(source, sql + " ORDER BY started_at", params)
    return [PairRow(t, r, s, e, json.loads(o) if o else {}, p, i, json.loads(st) if st else {})
            for t, r, s, e, o, p, i, st in found]  # fmt: skip


def completed_fingerprints(source: Source) -> dict[str, str]:
    """fingerprint (``config->>'fingerprint'``) -> run_id of every completed run (the latest one wins)."""
    found = rows(
        source, "SELECT config->>'fingerprint', run_id FROM runs WHERE status = 'completed' ORDER BY finished_at"
    )
    return {fingerprint: run_id for fingerprint, run_id in found if fingerprint}


def interrupted_runs(source: Source, fingerprints: Sequence[str]) -> list[str]:
    """The run ids of interrupted runs (stopped, not failed) with one of ``fingerprints`` and no completed run of
    the same fingerprint, the latest per fingerprint: what ``run.py study`` continues from a checkpoint."""
    if not fingerprints:
        return []
    found = rows(
        source,
        "SELECT arg_max(run_id, started_at) FROM runs r WHERE status = 'interrupted' "
        f"AND config->>'fingerprint' IN ({', '.join('?' * len(fingerprints))}) "
        "AND NOT EXISTS (SELECT 1 FROM runs c WHERE c.status = 'completed' "
        "AND c.config->>'fingerprint' = r.config->>'fingerprint') GROUP BY config->>'fingerprint' ORDER BY 1",
        list(fingerprints),
    )
    return [run_id for (run_id,) in found]


# --------------------------------------------------------------------------- results after a run

RUN_RESULT_COLUMNS = (
    "run_id", "task", "objective", "mode", "arm", "regime", "n_train", "controller", "seed", "status", "epochs_run",
    "final_objective", "best_objective", "best_epoch", "final_val_acc", "max_val_acc", "final_train_acc",
    "reference", "reference_objective",
)  # fmt: skip


def run_results(source: Source, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The ``run_results`` rows of these runs (see :data:`RUN_RESULT_COLUMNS`), by task, largest budget
    first, then seed, arm and controller. A run with no epoch recorded has no row."""
    run_ids = list(dict.fromkeys(run_ids))
    if not run_ids:
        return []
    found = rows(
        source,
        f"SELECT {', '.join(RUN_RESULT_COLUMNS)} FROM run_results WHERE run_id IN ({', '.join('?' * len(run_ids))}) "
        "ORDER BY task, n_train DESC, seed, arm, controller",
        run_ids,
    )  # one placeholder per run: the live recorder binds scalars only
    results = [dict(zip(RUN_RESULT_COLUMNS, row)) for row in found]
    summaries = best_epoch_summaries(source, [r["run_id"] for r in results])
    for result in results:
        result["summary"] = summaries.get(result["run_id"], {})
    return results


def best_epoch_summaries(source: Source, run_ids: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """run_id -> the task's summary metrics (``runs.config->'task'->'summary_metrics'``) and their reference
    values (``ols_<name>`` / ``ref_<name>``) at the run's best epoch; empty for runs whose task declares none."""
    if not run_ids:
        return {}
    found = rows(
        source,
        "SELECT rr.run_id, CAST(r.config->'task'->'summary_metrics' AS VARCHAR), CAST(e.metrics AS VARCHAR) "
        "FROM run_results rr JOIN runs r USING (run_id) "
        "JOIN epochs e ON e.run_id = rr.run_id AND e.epoch = rr.best_epoch "
        f"WHERE rr.run_id IN ({', '.join('?' * len(run_ids))})",
        list(run_ids),
    )
    summaries: dict[str, dict[str, float | None]] = {}
    for run_id, names, metrics in found:
        metrics = json.loads(metrics) if metrics else {}
        summary: dict[str, float | None] = {}
        for name in json.loads(names) if names else []:
            summary[name] = metrics.get(name)
            for prefix in REFERENCE_PREFIXES:
                if f"{prefix}_{name}" in metrics:
                    summary[f"{prefix}_{name}"] = metrics[f"{prefix}_{name}"]
        summaries[run_id] = summary
    return summaries


# --------------------------------------------------------------------------- the report's per-run rows

REPORT_RUN_COLUMNS = (
    "run_id", "task", "objective", "mode", "regime", "n_train", "arm", "controller", "llm_model", "seed", "status",
    "epochs", "epochs_run", "final_objective", "best_objective", "best_epoch", "final_val_acc", "max_val_acc",
    "final_train_acc", "reference", "reference_objective", "experiment", "trainer", "spec",
)  # fmt: skip
COST_COLUMNS = ("decisions", "llm_calls", "prompt_tokens", "completion_tokens", "wait_s", "cost_usd")


def has_view(source: Source, name: str) -> bool:
    """Whether the database defines the view ``name`` (another part of ReflectNet may add it later)."""
    return rows(source, "SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name])[0][0] > 0


def report_runs(source: Source) -> list[dict[str, Any]]:
    """Every completed or running run of a task, earliest finished first (running ones last), as dicts of
    :data:`REPORT_RUN_COLUMNS` (``experiment``, ``trainer``, ``spec``: the parsed ``runs.config`` parts, None
    where absent) plus :data:`COST_COLUMNS` from the view ``run_costs`` (None without it) and ``summary`` (see
    :func:`best_epoch_summaries`). A run with no epoch yet has ``epochs_run`` 0 and no objective."""
    costs = has_view(source, "run_costs")
    cost_sql = ", ".join(f"c.{c}" if costs else f"NULL AS {c}" for c in COST_COLUMNS)
    found = rows(
        source,
        f"""
        SELECT r.run_id, r.task, r.objective, r.mode, r.regime, r.n_train, r.arm, r.controller, r.llm_model, r.seed,
               r.status, r.epochs, coalesce(rr.epochs_run, 0), rr.final_objective, rr.best_objective, rr.best_epoch,
               rr.final_val_acc, rr.max_val_acc, rr.final_train_acc, rr.reference, rr.reference_objective,
               CAST(r.config->'experiment' AS VARCHAR), CAST(r.config->'trainer' AS VARCHAR),
               CAST(r.config->'spec' AS VARCHAR), {cost_sql}
        FROM runs r LEFT JOIN run_results rr USING (run_id)
        {"LEFT JOIN run_costs c USING (run_id)" if costs else ""}
        WHERE r.status IN ('completed', 'running') AND r.task IS NOT NULL AND r.objective IS NOT NULL
        ORDER BY r.status = 'running', r.finished_at, r.started_at, r.run_id
        """,
    )
    results = []
    for row in found:
        result = dict(zip(REPORT_RUN_COLUMNS + COST_COLUMNS, row))
        for name in ("experiment", "trainer", "spec"):
            value = _json(result[name])
            result[name] = value if isinstance(value, dict) else None
        results.append(result)
    summaries = best_epoch_summaries(source, [r["run_id"] for r in results if r["epochs_run"]])
    for result in results:
        result["summary"] = summaries.get(result["run_id"], {})
    return results
