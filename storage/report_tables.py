"""The report's Markdown, computed from :class:`storage.results.RunResult` rows alone, so that the report read
from the database and the one rendered from its CSV export are the same text: per task and setting the results
table (MNIST: the paper's columns), the paired statistics (:mod:`storage.report_stats`), the runs in progress."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from storage.report_data import direction
from storage.report_format import group_cells, markdown_table, mean_sd, mean_std, model_labels, num, setting_label, start_label
from storage.report_stats import SettingStats, stats_markdown
from storage.results import RunResult
from storage.schema import REFERENCE_PREFIXES

EXPORT_NAME = "results.csv"  # written beside the report's Markdown


def _paper_mean_std(values: list[float | None]) -> str:
    """The paper's columns: always 4 decimals."""
    present = [v for v in values if v is not None]
    if not present:
        return ""
    if len(present) == 1:
        return f"{present[0]:.4f}"
    mean, sd = mean_sd(present)
    return f"{mean:.4f} ± {sd:.4f}"


def _with_start(columns: list[str], row: Callable[[RunResult], tuple], shows_start: bool):
    """Columns and a row builder with a Start column after the budget, where any cell starts off the defaults."""
    if not shows_start:
        return columns, row
    return columns[:2] + ["Start"] + columns[2:], lambda r, *a: (*row(r, *a)[:2], start_label(r.start), *row(r, *a)[2:])


def paper_table_markdown(runs: list[RunResult]) -> str:
    """The paper's table (MNIST): final and best validation accuracy and training accuracy per cell."""
    cells = group_cells(runs)
    labels = model_labels(c[0] for c in cells.values())
    columns, row = _with_start(
        ["Regime", "Train images", "Model", "Seeds", "Final Val Acc", "Max Val Acc", "Train Acc"],
        lambda r, rs: (r.regime, f"{r.n_train}", labels[r.cell_key], len(rs),
                       *(_paper_mean_std([getattr(x, c) for x in rs])
                         for c in ("final_val_acc", "max_val_acc", "final_train_acc"))),
        any(r.start != "{}" for r in runs),
    )  # fmt: skip
    body = [row(rs[0], rs) for rs in cells.values()]
    return markdown_table(columns, body) + "\n\nMean ± sample std over seeds; completed runs only."


_REF_NAMES = tuple(f"{prefix}_" for prefix in REFERENCE_PREFIXES)


def task_table_markdown(runs: list[RunResult], objective: str, mode: str) -> str:
    """A task's table: the objective at the last and at the best epoch per cell, the task's summary metrics at
    the best epoch, and after each regime the task's reference (``ols_``/``ref_`` metrics) as a row of its own."""
    cells = group_cells(runs)
    labels = model_labels(c[0] for c in cells.values())
    names = sorted({n for rs in cells.values() for r in rs for n in r.summary_values if not n.startswith(_REF_NAMES)})
    shows_start = any(r.start != "{}" for r in runs)

    def summary(rs: list[RunResult], prefix: str = "") -> tuple:
        values = [[r.summary_values.get(prefix + n) for r in rs] for n in names]
        return tuple(mean_std([v for v in vs if v is not None]) for vs in values)

    columns, row = _with_start(
        ["Regime", "Budget", "Model", "Seeds", f"Final {objective}", f"Best {objective}", "Best epoch",
         *(f"{n} at best" for n in names)],
        lambda r, rs: (r.regime, f"{r.n_train}", labels[r.cell_key], len(rs),
                       mean_std([x.final_objective for x in rs]), mean_std([x.best_objective for x in rs]),
                       f"{statistics.fmean(x.best_epoch for x in rs):.1f}" if all(x.best_epoch is not None for x in rs) else "",
                       *summary(rs)),
        shows_start,
    )  # fmt: skip
    body: list[tuple] = []
    groups = list(cells.values())
    for i, rs in enumerate(groups):
        body.append(row(rs[0], rs))
        here = (rs[0].regime, rs[0].start)
        if i + 1 == len(groups) or (groups[i + 1][0].regime, groups[i + 1][0].start) != here:
            body += _reference_rows(runs, rs[0], names, shows_start, summary)
    note = f"Mean ± sample std over seeds; completed runs only; {objective}: {direction(mode)}."
    prefixes = sorted({r.reference for r in runs if r.counted and r.reference})
    if prefixes:
        note += f" Reference rows: the task's own {', '.join(f'`{p}_{objective}`' for p in prefixes)} metric, not a run."
    return markdown_table(columns, body) + "\n\n" + note


def _reference_rows(runs, first: RunResult, names, shows_start, summary) -> list[tuple]:
    """The reference rows of ``first``'s regime and start: one value per seed (the arms of a pair share their
    data, and so their reference), mean ± std over seeds."""
    rows = []
    for prefix, label in REFERENCE_PREFIXES.items():
        by_seed: dict[int, RunResult] = {}
        for r in runs:
            if r.counted and r.reference == prefix and (r.regime, r.start, r.setting) == (first.regime, first.start,
                                                                                           first.setting):  # fmt: skip
                by_seed.setdefault(r.seed, r)
        if by_seed:
            cell = mean_std([r.reference_objective for r in by_seed.values()])
            head = (first.regime, f"{first.n_train}") + ((start_label(first.start),) if shows_start else ())
            refs = summary(list(by_seed.values()), f"{prefix}_")
            rows.append((*head, f"Reference: {label}", len(by_seed), cell, cell, "", *refs))
    return rows


def running_table_markdown(runs: list[RunResult]) -> str:
    """The runs still going: how far each got and its objective so far (last and best by its mode)."""
    body = [
        (r.run_id, r.task, r.regime, r.arm, r.controller, r.seed, f"{r.epochs_run}/{r.epochs}", r.objective,
         num(r.final_objective), num(r.best_objective))
        for r in runs
    ]  # fmt: skip
    columns = ["Run", "Task", "Regime", "Arm", "Controller", "Seed", "Epochs", "Objective", "Last", "Best"]
    return markdown_table(columns, body)


def tasks_of(results: list[RunResult]) -> list[tuple[str, str, str]]:
    """(task, objective, mode) of every task with a completed or running run: MNIST first, then by name."""
    found = {(r.task, r.objective): r.mode for r in results}
    return [(t, o, m) for (t, o), m in sorted(found.items(), key=lambda k: (k[0][0] != "mnist", k[0]))]


def task_markdown(runs: list[RunResult], task: str, objective: str, mode: str, stats: dict[tuple, SettingStats]) -> str:
    """One task's section body: per setting its table and statistics (``stats``: see
    :func:`storage.report_stats.all_stats`)."""
    completed = [r for r in runs if r.counted]
    if not completed:
        return "No completed run yet.\n"
    settings = sorted({r.setting for r in completed})
    parts = []
    for setting in settings:
        mine = [r for r in completed if r.setting == setting]
        head = f"### Setting: {setting_label(setting)}\n\n" if len(settings) > 1 else (
            f"Setting: {setting_label(setting)}.\n\n")  # fmt: skip
        table = paper_table_markdown(mine) if task == "mnist" else task_table_markdown(mine, objective, mode)
        superseded = sum(1 for r in runs if r.setting == setting and r.status == "completed" and not r.counted)
        if superseded:
            table += (f" {superseded} completed run{'s' if superseded > 1 else ''} of a protocol and seed run again "
                      "later not counted (a seed counts once per cell: the latest run).")  # fmt: skip
        parts.append(head + table + "\n\n" + stats_markdown(stats[(task, objective, setting)]))
    if len(settings) > 1:
        parts.insert(0, f"{len(settings)} settings: runs of different settings are never pooled.\n")
    return "\n".join(parts)


def report_markdown(results: list[RunResult], stats: dict[tuple, SettingStats]) -> str:
    """The report's text from ``results`` alone (``stats``: their :func:`storage.report_stats.all_stats`): per task
    its tables and statistics, then the runs still going."""
    text = (f"# ReflectNet results\n\nThe per-run results these tables are computed from: `{EXPORT_NAME}` beside "
            f"this file (`run.py report --results {EXPORT_NAME}` renders them again).\n")  # fmt: skip
    tasks = tasks_of(results)
    for task, objective, mode in tasks:
        runs = [r for r in results if (r.task, r.objective) == (task, objective)]
        text += f"\n## Task {task}: {objective}, {direction(mode)}\n\n" + task_markdown(runs, task, objective, mode, stats)
    if not tasks:
        text += "\nNo completed run yet.\n"
    running = [r for r in results if r.status == "running"]
    if running:
        text += "\n## Runs in progress\n\n" + running_table_markdown(running) + "\n"
    return text
