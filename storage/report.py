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

import math
from pathlib import Path

from storage import queries
from storage.figures import (  # noqa: F401  (re-exported: the report's figures)
    DPI,
    decision_figure,
    figure_names,
    fit_figure,
    hyperparameter_figure,
    objective_figure,
    save_figure,
)
from storage.live import MAX_REPLY_BYTES
from storage.reader import ReaderError, open_reader
from storage.report_data import (  # noqa: F401  (re-exported: what the report reads)
    ReportData,
    ReportError,
    TaskReport,
    direction,
    metric_label,
    read_report_data,
)
from storage.schema import REFERENCE_PREFIXES


def markdown_table(columns: list[str], rows: list[tuple]) -> str:
    """``rows`` as a Markdown table (floats to 4 significant digits, NaN and NULL as empty cells)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def check_not_empty(query: str) -> None:
    """Raise :class:`ReaderError` (one line) when ``query`` holds no statement: empty, blank or only comments
    (DuckDB's own parser decides, so ``--`` and ``/* */`` comments count as nothing)."""
    import duckdb

    try:
        with duckdb.connect(":memory:") as parser:
            statements = parser.extract_statements(query)
    except duckdb.Error:
        return  # not parseable: the database says what is wrong with it
    if not statements:
        what = "only a comment" if query.strip() else "empty"
        raise ReaderError(f'the query is {what}: give a SQL statement, e.g. "SELECT * FROM paper_table"')


def run_sql(db: Path, query: str) -> str:
    """The answer to ``query`` as a Markdown table; during a run, from the live recorder (SELECT only). Raises
    :class:`ReaderError` (one line) for an empty query, a database that cannot be read, or a refused query."""
    check_not_empty(query)
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
