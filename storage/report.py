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

import shutil
from pathlib import Path

from storage import queries
from storage.figures import (  # noqa: F401  (re-exported: the report's figures)
    DPI,
    decision_figure,
    decision_figures,
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
    file_prefixes,
    metric_label,
    read_report_data,
)
from storage.report_format import markdown_table, num
from storage.report_stats import all_stats
from storage.report_tables import EXPORT_NAME, report_markdown, task_markdown
from storage.results import RunResult, merge_exports, read_results_csv, write_results_csv
from storage.schema import REFERENCE_PREFIXES

REPORT_NAME = "results.md"  # the whole report; MNIST's section also as the paper's paper_table.md
PAPER_NAME = "paper_table.md"
REPLICATION_NAME = "replication.md"  # a re-run's cells against the published results (--against)


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
                 num(r["final_val_acc"]), num(r["max_val_acc"]), num(r["final_train_acc"]))
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
                     num(r["final_objective"]), num(r["best_objective"]), r["best_epoch"],
                     *(num(summary.get(n)) for n in names)))  # fmt: skip
        nxt = runs[i + 1] if i + 1 < len(runs) else None
        if nxt is None or (nxt["regime"], nxt["seed"]) != (r["regime"], r["seed"]):
            ref = next((x for x in runs if (x["regime"], x["seed"]) == (r["regime"], r["seed"])
                        and x["reference"] is not None), None)  # fmt: skip
            if ref is not None:
                label, prefix = REFERENCE_PREFIXES.get(ref["reference"], ref["reference"]), ref["reference"]
                value = num(ref["reference_objective"])
                refs = (num(ref.get("summary", {}).get(f"{prefix}_{n}")) for n in names)
                body.append((r["regime"], r["seed"], f"reference: {label}", "", "", "", value, value, "", *refs))
    return columns, body


_REF_NAMES = tuple(f"{prefix}_" for prefix in REFERENCE_PREFIXES)


def results_text(db: Path, run_ids: list[str]) -> str:
    """:func:`results_markdown` for these runs of ``db`` (read-only, or from its live recorder); raises
    :class:`ReaderError` (one line) when the file cannot be read."""
    with open_reader(db) as reader:
        rows = queries.run_results(reader, run_ids)
    return results_markdown(rows) if rows else "(no epoch recorded for these runs)"




def _write_tables(results: list[RunResult], stats: dict, out: Path, export: Path | None = None) -> list[Path]:
    """Write the report's Markdown (:data:`REPORT_NAME`), the MNIST section as :data:`PAPER_NAME` where MNIST has
    a completed run, and the per-run export :data:`EXPORT_NAME` (written from ``results``, or copied from
    ``export``). Raises :class:`ReportError` (one line) where ``out`` cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = [out / REPORT_NAME]
        files[0].write_text(report_markdown(results, stats))
        mnist = [r for r in results if r.task == "mnist"]
        if any(r.counted for r in mnist):
            objective, mode = mnist[0].objective, mnist[0].mode
            paper = f"# ReflectNet: the paper's table (MNIST, {objective}, {direction(mode)})\n\n"
            files.append(out / PAPER_NAME)
            files[-1].write_text(paper + task_markdown(mnist, "mnist", objective, mode, stats))
        files.append(out / EXPORT_NAME)
        if export is None:
            write_results_csv(results, files[-1])
        elif export.resolve() != files[-1].resolve():
            shutil.copyfile(export, files[-1])
    except OSError as exc:
        raise ReportError(f"--out {out}: cannot write the report there: {exc.strerror}") from None
    return files


def _difference_figures(results: list[RunResult], stats: dict, out: Path) -> list[Path]:
    """Per task with a guided or A/A cell paired with its baseline, the figure of the paired differences."""
    from storage.figures import difference_figure

    files = []
    for (task, objective, _), prefix in file_prefixes(results).items():
        drawn = difference_figure(task, objective, [s for key, s in stats.items() if key[:2] == (task, objective)])
        if drawn is not None:
            files.append(save_figure(*drawn, out / f"{prefix}paired_differences.png"))
    return files


def published_stats(against: list[Path] | None) -> dict | None:
    """The :func:`all_stats` of the published results exported in ``against`` (None without any), read before
    anything is written so that a bad export leaves no half-written report. Raises ResultsError (one line)."""
    if not against:
        return None
    return all_stats(merge_exports([read_results_csv(export, "--against") for export in against]))


def write_replication(stats: dict, published: dict, against: list[Path], out: Path) -> Path:
    """Write :data:`REPLICATION_NAME`: the cells of ``stats`` (a re-run's :func:`all_stats`) against
    ``published`` (:func:`published_stats` of the exports ``against``; :mod:`storage.replication`). Raises
    :class:`ReportError` (one line) for an unwritable ``out``."""
    from storage.replication import replicated_cells, replication_markdown

    text = replication_markdown(replicated_cells(stats, published), " + ".join(map(str, against)))
    try:
        (out / REPLICATION_NAME).write_text(text)
    except OSError as exc:
        raise ReportError(f"--out {out}: cannot write the report there: {exc.strerror}") from None
    return out / REPLICATION_NAME


def write_report(db: Path, out: Path, rerun_seeds: int | None = None,
                 against: list[Path] | None = None) -> tuple[list[Path], list[str]]:  # fmt: skip
    """The tables, the per-run export and the figures for what ``db`` holds (completed runs; runs still going
    are listed and drawn dashed), per task: the files written (the report first; with ``against``, published
    exports, the re-run check :data:`REPLICATION_NAME` second), and notes on what could not be drawn or where it
    was read from; ``rerun_seeds``: the re-run intervals' seeds (:func:`storage.report_stats.setting_stats`)."""
    published = published_stats(against)
    with open_reader(db) as reader:
        data = read_report_data(reader)
    stats = all_stats(data.results, rerun_seeds)
    files = _write_tables(data.results, stats, out)
    if published is not None:
        files.insert(1, write_replication(stats, published, against, out))
    notes = [f"read from {data.source}"] if data.source != "the database file" else []
    files += _difference_figures(data.results, stats, out)
    for task in data.tasks:
        where = "" if len(data.tasks) == 1 else f"task {task.task}: "
        if not task.regimes:
            notes.append(f"{where}no epoch recorded yet: no figures")
            continue
        names = figure_names(task)
        files.append(save_figure(*objective_figure(task), out / names["objective"]))
        files.append(save_figure(*hyperparameter_figure(task), out / names["hyperparameters"]))
        if not task.timeline:  # e.g. a baseline-only database: the table and curves still stand
            notes.append(f"{where}no completed or running guided run to draw decisions for")
        pages = list(decision_figures(task))
        for page, drawn in enumerate(pages, 1):
            name = names["decisions"] if page == 1 else names["decisions"].replace(".png", f"_{page}.png")
            files.append(save_figure(*drawn, out / name))
        if len(pages) > 1:
            notes.append(f"{where}decision timeline: {len(task.timeline)} guided runs over {len(pages)} figures")
    return files, notes


def render_results(exports: list[Path], out: Path, rerun_seeds: int | None = None,
                   against: list[Path] | None = None) -> tuple[list[Path], list[str]]:  # fmt: skip
    """The report's tables and the figures an export can give (the paired differences), from results exports alone
    (``run.py report --results FILE [FILE ...]``): the same Markdown as the report one was exported with; several
    are merged (:func:`storage.results.merge_exports`) and written as one ``results.csv``; ``rerun_seeds`` and
    ``against`` as in :func:`write_report`. Raises
    :class:`ReportError` (one line) for an unreadable export or none with any run."""
    results = merge_exports([read_results_csv(export) for export in exports])
    if not any(r.counted or r.status == "running" for r in results):
        raise ReportError(f"--results {' '.join(map(str, exports))}: holds no completed or running run")
    published = published_stats(against)
    stats = all_stats(results, rerun_seeds)
    files = _write_tables(results, stats, out, export=exports[0] if len(exports) == 1 else None)
    if published is not None:
        files.insert(1, write_replication(stats, published, against, out))
    files += _difference_figures(results, stats, out)
    return files, ["from an export: the per-epoch figures (curves, hyperparameters, decisions) need the database"]
