"""What the report reads: every run's result, and per task its per-epoch panels, running runs and decision
timeline, read through a :class:`storage.reader.Reader` in one go (``read_report_data``); and the words for
metrics and directions that tables and figures share.

The figures pool runs as the tables do (:mod:`storage.results`): a panel per setting (where a task has several),
regime and start, a curve per cell in it named as the tables name it, over its counted runs (a seed once). Each
run's epoch rows are read once and grouped here by its :class:`RunResult`, so the same grouping serves both."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field

from storage.reader import Reader, ReaderError
from storage.report_format import cell_order, model_labels, setting_label, start_label
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


Points = list[tuple[int, float, float, float]]  # (epoch, mean, min, max) over the runs pooled


@dataclass
class Curve:
    """One cell of a panel (:attr:`storage.results.RunResult.cell_key`): the tables' name of it (Baseline, A/A,
    Guided (controller; what differs)), the counted runs pooled (a seed once), and per value ("objective" and each
    knob) its points over those runs."""

    label: str
    seeds: int
    points: dict[str, Points]


@dataclass
class RunningCurve:
    """One run still going: its cell's name, seed and epochs so far."""

    label: str
    seed: int
    epochs: list[int]
    values: dict[str, list[float | None]]  # "objective" and each knob -> value per epoch


@dataclass
class Panel:
    """The runs of one setting, regime and start: a panel of each per-epoch figure, titled with what its runs
    share ("regime full · start learning_rate=0.1", and the setting where the task has several)."""

    regime: str
    start: str  # canonical JSON, "{}": the task's defaults
    title: str
    curves: list[Curve]
    running: list[RunningCurve]


@dataclass
class TimelineRun:
    """A guided run's decisions: (epoch, objective, fallback, valid, verdict, changed) per epoch, and the
    user's instructions as (first epoch they shaped, text, the line said back when it was given: None before
    readings were recorded). ``where``: the title of its panel; ``label``: its cell's name."""

    run_id: str
    where: str
    label: str
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
    panels: list[Panel]  # by setting, largest budget first, default start first
    knobs: list[str]  # the hyperparameters the runs recorded, learning_rate first
    timeline: list[TimelineRun] = field(default_factory=list)
    file_prefix: str = ""  # "" for MNIST (the paper's file names), else "<task>_"

    @property
    def label(self) -> str:
        return metric_label(self.objective)

    @property
    def direction(self) -> str:
        return direction(self.mode)

    @property
    def regimes(self) -> list[str]:
        """The regimes with any epoch recorded, in panel order."""
        return list(dict.fromkeys(panel.regime for panel in self.panels))


@dataclass
class ReportData:
    """Everything the report draws and tabulates, read in one go so the file is held only for the reading:
    per task its curves and timeline, and every run's result (:mod:`storage.results`)."""

    tasks: list[TaskReport]
    results: list[RunResult]
    source: str = ""

    def task(self, name: str) -> TaskReport:
        return next(t for t in self.tasks if t.task == name)


EpochRows = list[tuple[int, float | None, dict[str, float]]]  # (epoch, objective, knob -> value), by epoch


def _knob_values(hyperparameters) -> dict[str, float]:
    """The numeric knobs of an ``epochs.hyperparameters`` value (JSON text from the live recorder)."""
    knobs = json.loads(hyperparameters) if isinstance(hyperparameters, str) else (hyperparameters or {})
    return {k: float(v) for k, v in knobs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _read_epochs(reader: Reader, task: str, objective: str) -> dict[str, EpochRows]:
    """run id -> its epoch rows, for every completed or running run of the task. Raises :class:`ReportError`
    where the live recorder cut the answer short (a curve drawn from part of its runs would mislead)."""
    found = reader.query(
        """
        SELECT e.run_id, e.epoch, e.objective, e.hyperparameters FROM epochs e JOIN runs r USING (run_id)
        WHERE r.status IN ('completed', 'running') AND r.task = ? AND r.objective = ? ORDER BY e.run_id, e.epoch
        """,
        [task, objective],
    )
    if found.truncated:
        raise ReportError(f"task {task}: the live recorder sent only part of the epochs: report after the run")
    rows: dict[str, EpochRows] = {}
    for run_id, epoch, value, hyperparameters in found.rows:
        rows.setdefault(run_id, []).append((epoch, value, _knob_values(hyperparameters)))
    return rows


def _spread(values: list[float]) -> tuple[float, float, float]:
    """Mean (NaN where a run diverged), min and max of the runs that did not."""
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values), min(finite, default=math.nan), max(finite, default=math.nan)


def pooled(runs: list[EpochRows]) -> dict[str, Points]:
    """Per value ("objective" and each knob): (epoch, mean, min, max) over the ``runs`` that recorded it then."""
    by_value: dict[str, dict[int, list[float]]] = {}
    for rows in runs:
        for epoch, objective, knobs in rows:
            for name, value in ({"objective": objective} | knobs).items():
                if value is not None:
                    by_value.setdefault(name, {}).setdefault(epoch, []).append(float(value))
    return {name: [(epoch, *_spread(values)) for epoch, values in sorted(epochs.items())]
            for name, epochs in by_value.items()}  # fmt: skip


def _running(label: str, seed: int, rows: EpochRows) -> RunningCurve:
    """A run still going; a knob first recorded at a later epoch is None at the epochs before."""
    knobs = dict.fromkeys(k for _, _, values in rows for k in values)
    values = {"objective": [v for _, v, _ in rows]} | {k: [values.get(k) for _, _, values in rows] for k in knobs}
    return RunningCurve(label, seed, [epoch for epoch, _, _ in rows], values)


def _shown(results: list[RunResult], epochs: dict[str, EpochRows]) -> list[RunResult]:
    """The runs the figures draw, in panel order: counted (a seed once) or running, with an epoch recorded."""
    shown = [r for r in results if (r.counted or r.status == "running") and r.run_id in epochs]
    return sorted(shown, key=lambda r: (r.setting, *cell_order(r), r.seed))


def _panels(shown: list[RunResult], epochs: dict[str, EpochRows], labels: dict[tuple, str],
            titles: dict[str, str]) -> list[Panel]:  # fmt: skip
    """One panel per setting, regime and start; in each a curve per cell (its counted runs) and its running runs."""
    groups: dict[str, list[RunResult]] = {}
    for run in shown:
        groups.setdefault(titles[run.run_id], []).append(run)
    panels = []
    for title, runs in groups.items():
        cells: dict[tuple, list[RunResult]] = {}
        for run in runs:
            if run.counted:
                cells.setdefault(run.cell_key, []).append(run)
        curves = [Curve(labels[key], len(cell), pooled([epochs[r.run_id] for r in cell])) for key, cell in cells.items()]
        running = [_running(labels[r.cell_key], r.seed, epochs[r.run_id]) for r in runs if r.status == "running"]
        panels.append(Panel(runs[0].regime, runs[0].start, title, curves, running))
    return panels


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


def _read_timeline(reader: Reader, shown: list[RunResult], labels: dict, titles: dict) -> list[TimelineRun]:
    """Every counted or running guided run of ``shown`` (running ones first, then in panel order) with its
    per-epoch decisions and instructions. Two queries: their points, their instructions."""
    runs = sorted((r for r in shown if r.arm == "guided"), key=lambda r: r.status != "running")
    if not runs:
        return []
    ids = [run.run_id for run in runs]
    points: dict[str, list] = {}
    for row in reader.query(
        f"""
        SELECT e.run_id, e.epoch, e.objective, d.fallback, d.valid, rf.verdict, d.hyperparameters_changed
        FROM epochs e
        LEFT JOIN decision_outcomes d ON d.run_id = e.run_id AND d.epoch = e.epoch
        LEFT JOIN reflections rf ON rf.run_id = e.run_id AND rf.about_epoch = e.epoch
        WHERE e.run_id IN ({", ".join("?" * len(ids))}) ORDER BY e.run_id, e.epoch
        """,
        ids,
    ).rows:
        points.setdefault(row[0], []).append(row[1:])
    instructions: dict[str, list] = {}
    for run_id, first_epoch, text, read_as in reader.query(
        f"""
        SELECT run_id, first_epoch, text, read_as FROM instructions
        WHERE first_epoch IS NOT NULL AND run_id IN ({", ".join("?" * len(ids))}) ORDER BY run_id, first_epoch
        """,
        ids,
    ).rows:
        instructions.setdefault(run_id, []).append((first_epoch, text, read_as))
    return [TimelineRun(r.run_id, titles[r.run_id], labels[r.cell_key], r.seed, r.status, points[r.run_id],
                        instructions.get(r.run_id, [])) for r in runs if r.run_id in points]  # fmt: skip


def _read_task(reader: Reader, results: list[RunResult], prefix: str) -> TaskReport:
    """Everything the figures show for one (task, objective) of ``results`` (its runs): a panel per setting,
    regime and start with a curve per cell of counted runs and a line per running run (the cells and their names
    the tables use: :func:`storage.report_format.model_labels` per setting), the references, the knobs recorded
    and the decision timeline."""
    task, objective, mode = results[0].task, results[0].objective, results[0].mode
    epochs = _read_epochs(reader, task, objective)
    shown = _shown(results, epochs)
    settings = {r.setting for r in shown}
    labels = {k: v for s in settings for k, v in model_labels([r for r in shown if r.setting == s]).items()}
    titles = {r.run_id: f"regime {r.regime} · start {start_label(r.start)}"
              + (f" · {setting_label(r.setting)}" if len(settings) > 1 else "") for r in shown}  # fmt: skip
    panels = _panels(shown, epochs, labels, titles)
    knobs = _knob_order(k for r in shown for _, _, values in epochs[r.run_id] for k in values)
    return TaskReport(task, objective, mode, _read_references(reader, task, objective), panels, knobs,
                      _read_timeline(reader, shown, labels, titles), prefix)  # fmt: skip


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
    tasks = [_read_task(reader, [r for r in results if (r.task, r.objective, r.mode) == key], prefix)
             for key, prefix in file_prefixes(results).items()]  # fmt: skip
    source = f"the live recorder (pid {reader.pid}), as of its last commit" if reader.live else "the database file"
    return ReportData(tasks, results, source)
