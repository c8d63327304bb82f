"""What the report reads: every row of a task's tables, curves, running runs and decision timeline, read
through a :class:`storage.reader.Reader` in one go (``read_report_data``), and the words for metrics and
directions that tables and figures share."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from storage.reader import Reader, ReaderError
from storage.results import RunResult, read_results

class ReportError(ReaderError):
    """A database that cannot be read or holds nothing to report: one line for the user."""


_WORDS = {
    "val": "validation", "acc": "accuracy", "eval": "evaluation", "rmse": "RMSE", "mae": "MAE", "r2": "R²",
    "lr": "learning rate", "ent": "entropy", "coef": "coefficient", "vf": "value function", "ols": "least squares",
}  # fmt: skip


def metric_label(name: str) -> str:
    """A metric's or knob's name in words: ``val_acc`` -> "validation accuracy"."""
    return " ".join(_WORDS.get(word, word) for word in name.replace("/", " ").replace("_", " ").split())


def direction(mode: str) -> str:
    """What an objective's ``mode`` means for a reader."""
    return "lower is better" if mode == "min" else "higher is better"


# --------------------------------------------------------------------------- what the report reads


@dataclass
class Curves:
    """Per (regime, arm/controller): epoch -> mean, min, max over seeds of one value (completed runs)."""

    by_group: dict[tuple[str, str], list[tuple[int, float, float, float]]]


@dataclass
class RunningCurve:
    """One run still going: its epochs so far."""

    regime: str
    label: str
    seed: int
    epochs: list[int]
    values: dict[str, list[float | None]]  # "objective" and each knob -> value per epoch


@dataclass
class TimelineRun:
    """A guided run's decisions: (epoch, objective, fallback, valid, verdict, changed) per epoch, and the
    user's instructions as (first epoch they shaped, text, the line said back when it was given: None before
    readings were recorded)."""

    run_id: str
    regime: str
    controller: str
    seed: int
    status: str
    points: list[tuple]
    instructions: list[tuple[int, str, str | None]] = field(default_factory=list)


@dataclass
class TaskReport:
    """One task's part of the report: its tables and what its figures draw."""

    task: str
    objective: str
    mode: str
    references: list[tuple]  # task_references: regime, n_train, reference, label, n, value, value_std
    curves: dict[str, Curves]  # "objective" and each knob name
    knobs: list[str]  # the hyperparameters the runs recorded, learning_rate first
    running: list[RunningCurve]
    regimes: list[str]  # with any epoch recorded, largest budget first
    timeline: list[TimelineRun] = field(default_factory=list)
    file_prefix: str = ""  # "" for MNIST (the paper's file names), else "<task>_"

    @property
    def label(self) -> str:
        return metric_label(self.objective)

    @property
    def direction(self) -> str:
        return direction(self.mode)


@dataclass
class ReportData:
    """Everything the report draws and tabulates, read in one go so the file is held only for the reading:
    per task its curves and timeline, and every run's result (:mod:`storage.results`)."""

    tasks: list[TaskReport]
    results: list[RunResult]
    source: str = ""

    def task(self, name: str) -> TaskReport:
        return next(t for t in self.tasks if t.task == name)


_LABEL = "CASE WHEN r.arm = 'baseline' THEN 'baseline' ELSE r.controller END"


def _objective_curves(reader: Reader, task: str, objective: str) -> Curves:
    rows = reader.query(
        f"""
        SELECT r.regime, {_LABEL} AS label, e.epoch, avg(e.objective), min(e.objective), max(e.objective),
               any_value(r.n_train)
        FROM epochs e JOIN runs r USING (run_id)
        WHERE r.status = 'completed' AND r.task = ? AND r.objective = ?
        GROUP BY ALL ORDER BY any_value(r.n_train) DESC, label, e.epoch
        """,
        [task, objective],
    ).rows
    grouped: dict[tuple[str, str], list] = {}
    for regime, label, epoch, mean, low, high, _ in rows:
        grouped.setdefault((regime, label), []).append((epoch, mean, low, high))
    return Curves(grouped)


def _knob_curves(reader: Reader, task: str, objective: str) -> dict[str, Curves]:
    rows = reader.query(
        f"""
        WITH hp AS (
            SELECT run_id, epoch, TRY_CAST(hyperparameters->>knob AS DOUBLE) AS value, knob
            FROM (SELECT run_id, epoch, hyperparameters, unnest(json_keys(hyperparameters)) AS knob FROM epochs)
        )
        SELECT hp.knob, r.regime, {_LABEL} AS label, hp.epoch, avg(hp.value), min(hp.value), max(hp.value),
               any_value(r.n_train)
        FROM hp JOIN runs r USING (run_id)
        WHERE r.status = 'completed' AND r.task = ? AND r.objective = ?
        GROUP BY ALL ORDER BY hp.knob, any_value(r.n_train) DESC, label, hp.epoch
        """,
        [task, objective],
    ).rows
    curves: dict[str, Curves] = {}
    for knob, regime, label, epoch, mean, low, high, _ in rows:
        curves.setdefault(knob, Curves({})).by_group.setdefault((regime, label), []).append((epoch, mean, low, high))
    return curves


def _knob_order(knobs) -> list[str]:
    """learning_rate first (the knob every task has), the others by name."""
    return sorted(set(knobs), key=lambda k: (k != "learning_rate", k))


def _read_references(reader: Reader, task: str, objective: str) -> list[tuple]:
    """The ``task_references`` rows of this task and objective (regime, n_train, reference, label, n, value, std)."""
    return reader.query(
        "SELECT regime, n_train, reference, label, n_seeds, value, value_std FROM task_references "
        "WHERE task = ? AND objective = ?",
        [task, objective],
    ).rows


def _read_running(reader: Reader, task: str, objective: str) -> dict[str, RunningCurve]:
    """The curves of the runs still going (by run id, largest regime first, then by start). A knob first
    recorded at a later epoch is None at the epochs before."""
    running: dict[str, RunningCurve] = {}
    for run_id, regime, _, label, seed, epoch, value, hyperparameters in reader.query(
        f"""
        SELECT r.run_id, r.regime, r.n_train, {_LABEL}, r.seed, e.epoch, e.objective, e.hyperparameters
        FROM epochs e JOIN runs r USING (run_id)
        WHERE r.status = 'running' AND r.task = ? AND r.objective = ?
        ORDER BY r.n_train DESC, r.started_at, e.epoch
        """,
        [task, objective],
    ).rows:
        curve = running.setdefault(run_id, RunningCurve(regime, label, seed, [], {"objective": []}))
        knobs = json.loads(hyperparameters) if isinstance(hyperparameters, str) else (hyperparameters or {})
        curve.epochs.append(epoch)
        curve.values["objective"].append(value)
        for knob in knobs.keys() | (curve.values.keys() - {"objective"}):
            curve.values.setdefault(knob, [None] * (len(curve.epochs) - 1)).append(knobs.get(knob))
    return running


def _read_timeline(reader: Reader, task: str, objective: str) -> list[TimelineRun]:
    """Every completed or running guided run (running ones first, then the largest regime) with its per-epoch
    decisions and instructions; a run without epochs is left out. Three queries: the runs, their points, their
    instructions."""
    runs = reader.query(
        """
        SELECT run_id, regime, controller, seed, status FROM runs
        WHERE arm = 'guided' AND status IN ('completed', 'running') AND task = ? AND objective = ?
        ORDER BY status = 'running' DESC, n_train DESC, controller, seed, run_id
        """,
        [task, objective],
    ).rows
    if not runs:
        return []
    points: dict[str, list] = {}
    for row in reader.query(
        f"""
        SELECT e.run_id, e.epoch, e.objective, d.fallback, d.valid, rf.verdict, d.hyperparameters_changed
        FROM epochs e
        LEFT JOIN decision_outcomes d ON d.run_id = e.run_id AND d.epoch = e.epoch
        LEFT JOIN reflections rf ON rf.run_id = e.run_id AND rf.about_epoch = e.epoch
        WHERE e.run_id IN ({", ".join("?" * len(runs))}) ORDER BY e.run_id, e.epoch
        """,
        [run[0] for run in runs],
    ).rows:
        points.setdefault(row[0], []).append(row[1:])
    instructions: dict[str, list] = {}
    for run_id, first_epoch, text, read_as in reader.query(
        f"""
        SELECT run_id, first_epoch, text, read_as FROM instructions
        WHERE first_epoch IS NOT NULL AND run_id IN ({", ".join("?" * len(runs))}) ORDER BY run_id, first_epoch
        """,
        [run[0] for run in runs],
    ).rows:
        instructions.setdefault(run_id, []).append((first_epoch, text, read_as))
    return [
        TimelineRun(run_id, regime, controller, seed, status, points[run_id], instructions.get(run_id, []))
        for run_id, regime, controller, seed, status in runs
        if run_id in points
    ]


def _read_task(reader: Reader, task: str, objective: str, mode: str, prefix: str) -> TaskReport:
    """Everything the figures show for one (task, objective): curves of completed and running runs, the
    references, the knobs recorded, the regimes (largest ``n_train`` first) and the decision timeline."""
    references = _read_references(reader, task, objective)
    curves = {"objective": _objective_curves(reader, task, objective)} | _knob_curves(reader, task, objective)
    running = _read_running(reader, task, objective)
    budgets = dict(reader.query(
        "SELECT regime, max(n_train) FROM runs WHERE task = ? AND objective = ? GROUP BY regime", [task, objective]
    ).rows)  # fmt: skip
    regimes = sorted(
        {r for r, _ in curves["objective"].by_group} | {c.regime for c in running.values()},
        key=lambda regime: (-budgets.get(regime, 0), regime),
    )
    knobs = _knob_order([k for k in curves if k != "objective"] + [k for c in running.values() for k in c.values])
    knobs = [k for k in knobs if k != "objective"]
    return TaskReport(task, objective, mode, references, curves, knobs, list(running.values()), regimes,
                      _read_timeline(reader, task, objective), prefix)  # fmt: skip


def file_prefixes(results: list[RunResult]) -> dict[tuple[str, str, str], str]:
    """(task, objective, mode) of every task the results hold, MNIST first -> the prefix of its figure files:
    "" for MNIST (the paper's file names), else "<task>_", or "<task>_<objective>_" for a task with several."""
    listed = sorted({(r.task, r.objective, r.mode) for r in results}, key=lambda t: (t[0] != "mnist", t))
    names = [task for task, _, _ in listed]
    prefixes = {}
    for task, objective, mode in listed:
        if task == "mnist" and names.count(task) == 1:
            prefixes[(task, objective, mode)] = ""
        else:
            prefixes[(task, objective, mode)] = f"{task}_" if names.count(task) == 1 else f"{task}_{objective}_"
    return prefixes


def read_report_data(reader: Reader) -> ReportData:
    """Every row the report needs, through ``reader``; raises :class:`ReportError` if there is nothing."""
    results = read_results(reader)
    if not any(r.counted or r.status == "running" for r in results):
        raise ReportError("the database holds no completed or running run yet")
    tasks = [_read_task(reader, task, objective, mode, prefix) for (task, objective, mode), prefix in
             file_prefixes(results).items()]  # fmt: skip
    source = f"the live recorder (pid {reader.pid}), as of its last commit" if reader.live else "the database file"
    return ReportData(tasks, results, source)
