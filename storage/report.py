"""Reading the database back: per task a results table in Markdown (MNIST: the paper's table), figures
for a paper, the results printed after a run, and ad-hoc SQL.

Every task is reported by its own objective and direction (``runs.objective``, ``runs.mode``): titles
and axes name the metric and say whether higher or lower is better, and a reference the task reports
beside its model (a metric ``ols_<objective>`` or ``ref_<objective>``, see
:data:`storage.schema.REFERENCE_PREFIXES`) is a row in its table and a dotted line in its figure.

Everything here reads through a :class:`storage.reader.Reader`: a read-only connection when the file
is free, or the live recorder while a run holds it (then the answer is as of its last commit). So it
works during a run and after it, and never changes a record. The report reads everything first and
lets go of the file before it draws. Used by ``python run.py report`` and ``python run.py sql``.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from storage import queries
from storage.live import MAX_REPLY_BYTES
from storage.reader import Reader, ReaderError, open_reader
from storage.schema import REFERENCE_PREFIXES

VERDICT_COLOURS = {"beneficial": "tab:green", "harmful": "tab:red", "neutral": "tab:gray"}
DPI = 120  # figures are laid out at the resolution they are written with
MAX_TIMELINE_RUNS = 6


class ReportError(ReaderError):
    """A database that cannot be read or holds nothing to report: one line for the user."""


def markdown_table(columns: list[str], rows: list[tuple]) -> str:
    """``rows`` as a Markdown table (floats to 4 significant digits, NaN and NULL as empty cells)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def run_sql(db: Path, query: str) -> str:
    """The answer to ``query`` as a Markdown table; during a run, from the live recorder (SELECT only)."""
    with open_reader(db) as reader:
        result = reader.query(query)
    if not result.columns:
        return "(no result)"
    n = len(result.rows)
    footer = f"({n} row{'s' if n != 1 else ''}"
    if reader.live:
        footer += f", from the live recorder, pid {reader.pid}, as of its last commit"
    if result.truncated:
        footer += (
            f"; truncated: the live recorder sends at most {MAX_REPLY_BYTES // 2**20} MiB or 100,000 rows, "
            f"so narrow the query or ask again after the run"
        )
    return markdown_table(result.columns, result.rows) + "\n" + footer + ")"


def _pm(mean: float, std: float | None, n: int) -> str:
    return f"{mean:.4f} ± {std:.4f}" if n > 1 and std is not None else f"{mean:.4f}"


def _num(value: float | None) -> str:
    """A metric value for a table: 4 decimals, 2 from 100 up (returns, RMSE in target units); empty for NULL."""
    if value is None:
        return ""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.2f}" if abs(value) >= 100 else f"{value:.4f}"


def _pm_num(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return ""
    return f"{_num(mean)} ± {_num(std)}" if n > 1 and std is not None else _num(mean)


# Words of metric and knob names, for titles and axes: "val_rmse" -> "validation RMSE".
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
    """A guided run's decisions: (epoch, objective, fallback, valid, verdict, changed) per epoch."""

    run_id: str
    regime: str
    controller: str
    seed: int
    status: str
    points: list[tuple]


@dataclass
class TaskReport:
    """One task's part of the report: its tables and what its figures draw."""

    task: str
    objective: str
    mode: str
    table_rows: list[
        tuple
    ]  # task_table: regime, n_train, arm, controller, n, final, final_std, best, best_std, best_epoch
    paper_rows: list[tuple]  # paper_table (MNIST only)
    references: list[tuple]  # task_references: regime, n_train, reference, label, n, value, value_std
    curves: dict[str, Curves]  # "objective" and each knob name
    knobs: list[str]  # the hyperparameters the runs recorded, learning_rate first
    running: list[RunningCurve]
    regimes: list[str]  # with any epoch recorded, largest budget first
    timeline: list[TimelineRun] = field(default_factory=list)
    file_prefix: str = ""  # "" for MNIST (the paper's file names), else "<task>_"
    # The task's summary metrics at the best epoch: (regime, arm, controller) -> name -> (n, mean, std); a
    # reference's value under (regime, "reference", <prefix>).
    summaries: dict[tuple, dict[str, tuple]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return metric_label(self.objective)

    @property
    def direction(self) -> str:
        return direction(self.mode)


@dataclass
class ReportData:
    """Everything the report draws, read in one go so the file is held only for the reading."""

    tasks: list[TaskReport]
    running_rows: list[tuple]
    source: str = ""

    def task(self, name: str) -> TaskReport:
        return next(t for t in self.tasks if t.task == name)


def paper_table_markdown(rows: list[tuple]) -> str:
    """The paper's table from rows of the ``paper_table`` view."""
    body = [
        (regime, f"{n_train}", "Baseline" if arm == "baseline" else f"Guided ({controller})", n,
         _pm(fv, fvs, n), _pm(mv, mvs, n), _pm(tv, tvs, n))
        for regime, n_train, arm, controller, n, fv, fvs, mv, mvs, tv, tvs in rows
    ]  # fmt: skip
    columns = ["Regime", "Train images", "Model", "Seeds", "Final Val Acc", "Max Val Acc", "Train Acc"]
    return markdown_table(columns, body) + "\n\nMean ± sample std over seeds; completed runs only."


def task_table_markdown(task: TaskReport) -> str:
    """A task's table from rows of the ``task_table`` view: the objective at the last and at the best epoch
    per regime and model, with the task's references (``task_references``) as rows of their own."""
    refs: dict[str, list[tuple]] = {}
    for regime, n_train, ref, label, n, value, value_std in task.references:
        cell = _pm_num(value, value_std, n)
        refs.setdefault(regime, []).append(((regime, f"{n_train}", f"Reference: {label}", n, cell, cell, ""), ref))
    names = sorted({name for values in task.summaries.values() for name in values})

    def summary(key: tuple) -> tuple:
        values = task.summaries.get(key, {})
        return tuple(_pm_num(values[n][1], values[n][2], values[n][0]) if n in values else "" for n in names)

    body: list[tuple] = []
    for i, (regime, n_train, arm, controller, n, fv, fvs, bv, bvs, best_epoch) in enumerate(task.table_rows):
        model = "Baseline" if arm == "baseline" else f"Guided ({controller})"
        epoch = "" if best_epoch is None else f"{best_epoch:.1f}"
        body.append((regime, f"{n_train}", model, n, _pm_num(fv, fvs, n), _pm_num(bv, bvs, n), epoch,
                     *summary((regime, arm, controller))))  # fmt: skip
        if i + 1 == len(task.table_rows) or task.table_rows[i + 1][0] != regime:
            body += [row + summary((regime, "reference", ref)) for row, ref in refs.pop(regime, [])]
    for rows in refs.values():
        body += [row + summary((row[0], "reference", ref)) for row, ref in rows]
    columns = ["Regime", "Budget", "Model", "Seeds", f"Final {task.objective}", f"Best {task.objective}", "Best epoch",
               *(f"{name} at best" for name in names)]  # fmt: skip
    note = f"Mean ± sample std over seeds; completed runs only; {task.objective}: {task.direction}."
    if task.references:
        names = ", ".join(sorted({f"`{ref}_{task.objective}`" for _, _, ref, *_ in task.references}))
        note += f" Reference rows: the task's own {names} metric, not a run."
    return markdown_table(columns, body) + "\n\n" + note


def running_table_markdown(rows: list[tuple]) -> str:
    """The runs still going: how far each got and its objective so far (last and best by its mode)."""
    body = [
        (run_id, task, regime, arm, controller, seed, f"{done}/{total}", objective, _num(last), _num(best))
        for run_id, task, regime, arm, controller, seed, done, total, objective, last, best in rows
    ]  # fmt: skip
    columns = ["Run", "Task", "Regime", "Arm", "Controller", "Seed", "Epochs", "Objective", "Last", "Best"]
    return markdown_table(columns, body)


def results_markdown(rows: list[dict]) -> str:
    """The results of some runs, one table per task, from :func:`storage.queries.run_results` rows (what
    ``run.py`` prints after a run). MNIST: the paper's columns; other tasks: the objective at the last and
    at the best epoch, and after each (regime, seed) the task's reference value, if it reports one."""
    by_task: dict[tuple, list[dict]] = {}
    for row in rows:
        by_task.setdefault((row["task"], row["objective"], row["mode"]), []).append(row)
    parts = []
    for (task, objective, mode), runs in by_task.items():
        head = f"Task {task}: {objective}, {direction(mode)}\n\n"
        if task == "mnist":
            columns = ["Regime", "Seed", "Model", "Controller", "Status", "Epochs", "Final Val Acc", "Max Val Acc",
                       "Train Acc"]  # fmt: skip
            body = [
                (r["regime"], r["seed"], r["arm"], r["controller"], r["status"], r["epochs_run"],
                 _num(r["final_val_acc"]), _num(r["max_val_acc"]), _num(r["final_train_acc"]))
                for r in runs
            ]  # fmt: skip
        else:
            columns, body = _task_results(objective, runs)
        parts.append(head + markdown_table(columns, body))
    return "\n\n".join(parts)


def _task_results(objective: str, runs: list[dict]) -> tuple[list[str], list[tuple]]:
    """Columns and rows for a task other than MNIST: the objective at the last and best epoch, the task's
    summary metrics at the best epoch, and after each (regime, seed) the task's reference, if it reports one."""
    names = list(dict.fromkeys(n for r in runs for n in r.get("summary", {}) if not n.startswith(_REF_NAMES)))
    columns = ["Regime", "Seed", "Model", "Controller", "Status", "Epochs", f"Final {objective}",
               f"Best {objective}", "Best Epoch", *(f"{n} at best" for n in names)]  # fmt: skip
    body = []
    for i, r in enumerate(runs):
        summary = r.get("summary", {})
        body.append((r["regime"], r["seed"], r["arm"], r["controller"], r["status"], r["epochs_run"],
                     _num(r["final_objective"]), _num(r["best_objective"]), r["best_epoch"],
                     *(_num(summary.get(n)) for n in names)))  # fmt: skip
        nxt = runs[i + 1] if i + 1 < len(runs) else None
        if nxt is None or (nxt["regime"], nxt["seed"]) != (r["regime"], r["seed"]):
            ref = next((x for x in runs if (x["regime"], x["seed"]) == (r["regime"], r["seed"])
                        and x["reference"] is not None), None)  # fmt: skip
            if ref is not None:
                label, prefix = REFERENCE_PREFIXES.get(ref["reference"], ref["reference"]), ref["reference"]
                value = _num(ref["reference_objective"])
                refs = (_num(ref.get("summary", {}).get(f"{prefix}_{n}")) for n in names)
                body.append((r["regime"], r["seed"], f"reference: {label}", "", "", "", value, value, "", *refs))
    return columns, body


_REF_NAMES = tuple(f"{prefix}_" for prefix in REFERENCE_PREFIXES)


def results_text(db: Path, run_ids: list[str]) -> str:
    """:func:`results_markdown` for these runs of ``db`` (read-only, or from its live recorder); raises
    :class:`ReaderError` (one line) when the file cannot be read."""
    with open_reader(db) as reader:
        rows = queries.run_results(reader, run_ids)
    return results_markdown(rows) if rows else "(no epoch recorded for these runs)"


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


def _read_tables(reader: Reader, task: str, objective: str) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """The rows of ``task_table``, ``paper_table`` (MNIST only, else empty) and ``task_references`` for
    this task and objective (column order: see :class:`TaskReport`)."""
    table_rows = reader.query(
        "SELECT regime, n_train, arm, controller, n_seeds, final_objective, final_objective_std, best_objective, "
        "best_objective_std, mean_best_epoch FROM task_table WHERE task = ? AND objective = ?",
        [task, objective],
    ).rows
    paper_rows = []
    if task == "mnist":
        paper_rows = reader.query(
            "SELECT regime, n_train, arm, controller, n_seeds, final_val_acc, final_val_acc_std, max_val_acc, "
            "max_val_acc_std, train_acc, train_acc_std FROM paper_table"
        ).rows
    references = reader.query(
        "SELECT regime, n_train, reference, label, n_seeds, value, value_std FROM task_references "
        "WHERE task = ? AND objective = ?",
        [task, objective],
    ).rows
    return table_rows, paper_rows, references


def _read_summaries(reader: Reader, task: str, objective: str) -> dict[tuple, dict[str, tuple]]:
    """The task's summary metrics (``runs.config->'task'->'summary_metrics'``) at each completed run's best
    epoch, as (n, mean, sample std) per (regime, arm, controller), and their reference values (``ols_<name>``,
    ``ref_<name>``) per (regime, "reference", prefix)."""
    rows = reader.query(
        """
        SELECT r.regime, r.arm, r.controller, CAST(r.config->'task'->'summary_metrics' AS VARCHAR),
               CAST(e.metrics AS VARCHAR)
        FROM run_results rr JOIN runs r USING (run_id) JOIN epochs e ON e.run_id = rr.run_id AND e.epoch = rr.best_epoch
        WHERE r.status = 'completed' AND r.task = ? AND r.objective = ?
        """,
        [task, objective],
    ).rows
    values: dict[tuple, dict[str, list[float]]] = {}
    for regime, arm, controller, names, metrics in rows:
        metrics = json.loads(metrics) if metrics else {}
        for name in json.loads(names) if names else []:
            groups = [((regime, arm, controller), name, metrics.get(name))]
            groups += [((regime, "reference", p), name, metrics.get(f"{p}_{name}")) for p in REFERENCE_PREFIXES]
            for key, metric, value in groups:
                if value is None or (key[1] == "reference" and arm != "baseline"):  # a reference once per seed
                    continue
                values.setdefault(key, {}).setdefault(metric, []).append(float(value))
    return {key: {name: _mean_std(v) for name, v in by_name.items()} for key, by_name in values.items()}


def _mean_std(values: list[float]) -> tuple[int, float, float | None]:
    """(n, mean, sample std or None for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else None
    return n, mean, std


def _read_running(reader: Reader, task: str, objective: str) -> tuple[dict[str, RunningCurve], dict[str, int]]:
    """The curves of the runs still going (by run id, largest regime first, then by start) and each of
    their regimes' ``n_train``. A knob first recorded at a later epoch is None at the epochs before."""
    running: dict[str, RunningCurve] = {}
    n_train_of: dict[str, int] = {}
    for run_id, regime, n_train, label, seed, epoch, value, hyperparameters in reader.query(
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
        n_train_of[regime] = n_train
    return running, n_train_of


def _read_timeline(reader: Reader, task: str, objective: str) -> list[TimelineRun]:
    """Up to :data:`MAX_TIMELINE_RUNS` guided runs (running ones first, then the largest regime) with their
    per-epoch decisions; a run without epochs is left out. Two queries: the runs, then all their points."""
    runs = reader.query(
        """
        SELECT run_id, regime, controller, seed, status FROM runs
        WHERE arm = 'guided' AND status IN ('completed', 'running') AND task = ? AND objective = ?
        ORDER BY status = 'running' DESC, n_train DESC, controller, seed LIMIT ?
        """,
        [task, objective, MAX_TIMELINE_RUNS],
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
    return [
        TimelineRun(run_id, regime, controller, seed, status, points[run_id])
        for run_id, regime, controller, seed, status in runs
        if run_id in points
    ]


def _read_task(reader: Reader, task: str, objective: str, mode: str, prefix: str) -> TaskReport:
    """Everything the report shows for one (task, objective): tables, curves of completed and running
    runs, the knobs recorded, the regimes (largest ``n_train`` first) and the decision timeline."""
    table_rows, paper_rows, references = _read_tables(reader, task, objective)
    curves = {"objective": _objective_curves(reader, task, objective)} | _knob_curves(reader, task, objective)
    running, n_train_of = _read_running(reader, task, objective)
    n_train_of |= {row[0]: row[1] for row in table_rows}
    regimes = sorted(
        {r for r, _ in curves["objective"].by_group} | {c.regime for c in running.values()},
        key=lambda regime: -n_train_of.get(regime, 0),
    )
    knobs = _knob_order([k for k in curves if k != "objective"] + [k for c in running.values() for k in c.values])
    knobs = [k for k in knobs if k != "objective"]
    timeline = _read_timeline(reader, task, objective)
    return TaskReport(task, objective, mode, table_rows, paper_rows, references, curves, knobs,
                      list(running.values()), regimes, timeline, prefix, _read_summaries(reader, task, objective))  # fmt: skip


def read_report_data(reader: Reader) -> ReportData:
    """Every row the report needs, through ``reader``; raises :class:`ReportError` if there is nothing."""
    running_rows = reader.query(
        """
        SELECT r.run_id, r.task, r.regime, r.arm, r.controller, r.seed, count(e.epoch), r.epochs, r.objective,
               arg_max(e.objective, e.epoch),
               CASE WHEN r.mode = 'min' THEN min(e.objective) FILTER (WHERE NOT isnan(e.objective))
                    ELSE max(e.objective) FILTER (WHERE NOT isnan(e.objective)) END
        FROM runs r LEFT JOIN epochs e USING (run_id)
        WHERE r.status = 'running'
        GROUP BY r.run_id, r.task, r.regime, r.arm, r.controller, r.seed, r.epochs, r.objective, r.mode
        ORDER BY min(r.started_at), r.run_id
        """
    ).rows
    listed = reader.query(
        """
        SELECT task, objective, any_value(mode) FROM runs
        WHERE status IN ('completed', 'running') AND task IS NOT NULL AND objective IS NOT NULL
        GROUP BY task, objective ORDER BY task <> 'mnist', task, objective
        """
    ).rows
    names = [task for task, _, _ in listed]
    tasks = []
    for task, objective, mode in listed:
        if task == "mnist" and names.count(task) == 1:
            prefix = ""  # the paper's file names
        else:
            prefix = f"{task}_" if names.count(task) == 1 else f"{task}_{objective}_"
        tasks.append(_read_task(reader, task, objective, mode, prefix))
    if not any(t.table_rows for t in tasks) and not running_rows:
        raise ReportError("the database holds no completed or running run yet")
    source = f"the live recorder (pid {reader.pid}), as of its last commit" if reader.live else "the database file"
    return ReportData(tasks, running_rows, source)


# --------------------------------------------------------------------------- figures


def _figure(n: int, height: float = 3.2):
    """A figure of ``n`` panels, three to a row, laid out by matplotlib's constrained layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(5 * cols, height * rows), squeeze=False, dpi=DPI, layout="constrained"
    )
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat)


def _suptitle(fig, text: str) -> None:
    """A figure title wrapped at word boundaries until it fits the figure's width."""
    title = fig.suptitle(text)
    renderer = fig.canvas.get_renderer()
    width = len(text)
    while title.get_window_extent(renderer).width > 0.96 * fig.bbox.width and width > 10:
        width = int(width * 0.85)
        title.set_text(textwrap.fill(text, width))


def overflow(fig) -> tuple[float, float, float, float]:
    """How far (inches) the drawn figure's artists reach past its left, bottom, right and top edges."""
    fig.draw_without_rendering()
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    width, height = fig.get_size_inches()
    return max(0.0, -box.x0), max(0.0, -box.y0), max(0.0, box.x1 - width), max(0.0, box.y1 - height)


def fit_figure(fig) -> None:
    """Grow ``fig`` until every title, label and legend lies inside it (a no-op when they already do)."""
    for _ in range(3):
        left, bottom, right, top = overflow(fig)
        if max(left, bottom, right, top) < 0.01:
            return
        width, height = fig.get_size_inches()
        fig.set_size_inches(width + left + right + 0.1, height + bottom + top + 0.1)


def save_figure(plt, fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at :data:`DPI`, fitted first (see :func:`fit_figure`)."""
    fit_figure(fig)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def objective_figure(task: TaskReport):
    """The task's objective per epoch: per regime, a mean line and min–max band per controller over the
    completed seeds, a dashed line per run still going, and a dotted line per reference the task reports."""
    plt, fig, axes = _figure(len(task.regimes))
    for ax, regime in zip(axes, task.regimes):
        for (r, label), points in task.curves["objective"].by_group.items():
            if r == regime:
                epochs, mean, low, high = zip(*points)
                line = ax.plot(epochs, mean, label=label, linewidth=1.5)[0]
                ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        for run in task.running:
            if run.regime == regime:
                ax.plot(run.epochs, run.values["objective"], linestyle="--", marker=".",
                        label=f"{run.label}, seed {run.seed} (running)")  # fmt: skip
        for r, _, _, label, n, value, _ in task.references:
            if r == regime and value is not None:
                seeds = f", mean of {n} seeds" if n > 1 else ""
                ax.axhline(value, color="black", linestyle=":", linewidth=1.2, label=f"{label} (reference{seeds})")
        ax.set_title(f"regime {regime}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{task.label} ({task.direction})")
        ax.grid(alpha=0.3)
        _legend(ax)
    _suptitle(fig, f"{task.label[:1].upper()}{task.label[1:]} per epoch, {task.direction} "
                   f"(line: mean over seeds, band: min–max)")  # fmt: skip
    return plt, fig


def hyperparameter_figure(task: TaskReport):
    """The value of each knob the controllers chose, per regime (mean over seeds; dashed: running)."""
    knobs = task.knobs or ["learning_rate"]
    plt, fig, axes = _figure(len(knobs) * len(task.regimes), height=3.0)
    for i, regime in enumerate(task.regimes):
        for j, knob in enumerate(knobs):
            ax = axes[len(knobs) * i + j]
            values: list[float] = []
            for (r, label), points in task.curves.get(knob, Curves({})).by_group.items():
                if r == regime:
                    epochs, mean, _, _ = zip(*points)
                    ax.step(epochs, mean, where="post", label=label)
                    values += [v for v in mean if v is not None]
            for run in task.running:
                if run.regime == regime and knob in run.values:
                    ax.step(run.epochs, [math.nan if v is None else v for v in run.values[knob]], where="post",
                            linestyle="--", label=f"{run.label}, seed {run.seed} (running)")  # fmt: skip
                    values += [v for v in run.values[knob] if v is not None]
            ax.set_title(f"regime {regime}: {metric_label(knob)}")
            ax.set_xlabel("epoch (value used during it)")
            positive = [v for v in values if v > 0 and math.isfinite(v)]
            if (
                positive
                and len(positive) == len(values)
                and (knob == "learning_rate" or max(positive) / min(positive) >= 10)
            ):
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            _legend(ax)
    _suptitle(fig, "Hyperparameters the controllers chose (mean over seeds)")
    return plt, fig


def decision_figure(task: TaskReport):
    """Each guided run's objective with its decisions, coloured by the verdict on them."""
    plt, fig, axes = _figure(len(task.timeline))
    for ax, run in zip(axes, task.timeline):
        epochs = [p[0] for p in run.points]
        ax.plot(epochs, [p[1] for p in run.points], color="black", linewidth=1, zorder=1)
        for epoch, value, fallback, valid, verdict, changed in run.points:
            marker = "x" if fallback else ("o" if valid in (True, None) else "s")
            size = 60 if changed else 25
            ax.scatter([epoch], [value], c=VERDICT_COLOURS.get(verdict, "tab:blue"), marker=marker, s=size, zorder=2)
        running = " (running)" if run.status == "running" else ""
        ax.set_title(f"{run.regime} · {run.controller} · seed {run.seed}{running}", fontsize=10)
        ax.set_xlabel("epoch (decision made after it)")
        ax.set_ylabel(f"{task.label} ({task.direction})")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=v) for v, c in VERDICT_COLOURS.items()]
    handles += [
        plt.Line2D([], [], color="tab:blue", marker="o", linestyle="", label="not judged"),
        plt.Line2D([], [], color="black", marker="s", linestyle="", label="repaired"),
        plt.Line2D([], [], color="black", marker="x", linestyle="", label="fallback"),
        plt.Line2D([], [], color="black", marker="o", markersize=9, linestyle="", label="changed a hyperparameter"),
    ]
    renderer = fig.canvas.get_renderer()
    for ncol in range(len(handles), 0, -1):  # as many columns as the figure's width holds
        legend = fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8)
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.96 * fig.bbox.width:
            break
        legend.remove()
    _suptitle(fig, "Decisions and the verdicts on them")
    return plt, fig


def figure_names(task: TaskReport) -> dict[str, str]:
    """The file each of a task's figures is written to: MNIST keeps the paper's names, another task's
    carry its name (``diabetes_val_rmse.png``, ``diabetes_hyperparameters.png``, ``diabetes_decisions.png``)."""
    objective = "validation_accuracy.png" if task.file_prefix == "" else f"{task.file_prefix}{task.objective}.png"
    return {
        "objective": objective,
        "hyperparameters": f"{task.file_prefix}hyperparameters.png",
        "decisions": f"{task.file_prefix}decisions.png",
    }


def report_markdown(data: ReportData, db: Path) -> str:
    """The report's text: per task its table (MNIST: the paper's), then the runs still going."""
    text = f"# ReflectNet results\n\nFrom `{db}`, read from {data.source}.\n"
    for task in data.tasks:
        text += f"\n## Task {task.task}: {task.objective}, {task.direction}\n\n"
        if task.task == "mnist" and task.paper_rows:
            text += paper_table_markdown(task.paper_rows)
        elif task.table_rows:
            text += task_table_markdown(task)
        else:
            text += "No completed run yet."
        text += "\n"
    if not data.tasks:
        text += "\nNo completed run yet.\n"
    if data.running_rows:
        text += "\n## Runs in progress\n\n" + running_table_markdown(data.running_rows) + "\n"
    return text


def write_report(db: Path, out: Path) -> tuple[list[Path], list[str]]:
    """The tables and figures for what ``db`` holds (completed runs; runs still going are listed and
    drawn dashed), per task: the files written (the table first), and notes on what could not be drawn."""
    with open_reader(db) as reader:
        data = read_report_data(reader)
    text = report_markdown(data, db)
    try:
        out.mkdir(parents=True, exist_ok=True)
        files, notes = [out / "paper_table.md"], []
        files[0].write_text(text)
    except OSError as exc:
        raise ReportError(f"--out {out}: cannot write the report there: {exc.strerror}") from None
    for task in data.tasks:
        where = "" if len(data.tasks) == 1 else f"task {task.task}: "
        if not task.regimes:
            notes.append(f"{where}no epoch recorded yet: no figures")
            continue
        names = figure_names(task)
        files.append(save_figure(*objective_figure(task), out / names["objective"]))
        files.append(save_figure(*hyperparameter_figure(task), out / names["hyperparameters"]))
        if task.timeline:
            files.append(save_figure(*decision_figure(task), out / names["decisions"]))
        else:  # e.g. a baseline-only database: the table and curves still stand
            notes.append(f"{where}no completed or running guided run to draw decisions for")
    return files, notes
