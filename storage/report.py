"""Reading the database back: the paper's table in Markdown, figures for a paper, and ad-hoc SQL.

Everything here reads through a :class:`storage.reader.Reader`: a read-only connection when the file
is free, or the live recorder while a run holds it (then the answer is as of its last commit). So it
works during a run and after it, and never changes a record. The report reads everything first and
lets go of the file before it draws. Used by ``python run.py report`` and ``python run.py sql``.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from storage.live import MAX_REPLY_BYTES
from storage.reader import Reader, ReaderError, open_reader

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


# --------------------------------------------------------------------------- what the report reads


@dataclass
class Curves:
    """Per (regime, arm/controller): epoch -> mean, min, max over seeds of one column (completed runs)."""

    by_group: dict[tuple[str, str], list[tuple[int, float, float, float]]]


@dataclass
class RunningCurve:
    """One run still going: its epochs so far."""

    regime: str
    label: str
    seed: int
    epochs: list[int]
    values: dict[str, list[float]]  # column -> value per epoch


@dataclass
class TimelineRun:
    """A guided run's decisions: (epoch, val_acc, fallback, valid, verdict, changed) per epoch."""

    run_id: str
    regime: str
    controller: str
    seed: int
    status: str
    points: list[tuple]


@dataclass
class ReportData:
    """Everything the report draws, read in one go so the file is held only for the reading."""

    paper_rows: list[tuple]
    running_rows: list[tuple]
    curves: dict[str, Curves]  # val_acc, lr, dropout
    running: list[RunningCurve]
    regimes: list[str]  # with any epoch recorded, largest training set first
    timeline: list[TimelineRun] = field(default_factory=list)
    source: str = ""


def paper_table_markdown(rows: list[tuple]) -> str:
    """The paper's table from rows of the ``paper_table`` view."""
    body = [
        (regime, f"{n_train}", "Baseline" if arm == "baseline" else f"Guided ({controller})", n,
         _pm(fv, fvs, n), _pm(mv, mvs, n), _pm(tv, tvs, n))
        for regime, n_train, arm, controller, n, fv, fvs, mv, mvs, tv, tvs in rows
    ]  # fmt: skip
    columns = ["Regime", "Train images", "Model", "Seeds", "Final Val Acc", "Max Val Acc", "Train Acc"]
    return markdown_table(columns, body) + "\n\nMean ± sample std over seeds; completed runs only."


def running_table_markdown(rows: list[tuple]) -> str:
    """The runs still going: how far each got and its validation accuracy so far."""
    body = [
        (run_id, regime, arm, controller, seed, f"{done}/{total}",
         "" if last is None else f"{last:.4f}", "" if best is None else f"{best:.4f}")
        for run_id, regime, arm, controller, seed, done, total, last, best in rows
    ]  # fmt: skip
    columns = ["Run", "Regime", "Arm", "Controller", "Seed", "Epochs", "Last Val Acc", "Best Val Acc"]
    return markdown_table(columns, body)


def _curves(reader: Reader, column: str) -> Curves:
    rows = reader.query(
        f"""
        SELECT r.regime, CASE WHEN r.arm = 'baseline' THEN 'baseline' ELSE r.controller END AS label,
               e.epoch, avg(e.{column}), min(e.{column}), max(e.{column}), any_value(r.n_train)
        FROM epochs e JOIN runs r USING (run_id)
        WHERE r.status = 'completed'
        GROUP BY ALL ORDER BY any_value(r.n_train) DESC, label, e.epoch
        """
    ).rows
    grouped: dict[tuple[str, str], list] = {}
    for regime, label, epoch, mean, low, high, _ in rows:
        grouped.setdefault((regime, label), []).append((epoch, mean, low, high))
    return Curves(grouped)


def read_report_data(reader: Reader) -> ReportData:
    """Every row the report needs, through ``reader``; raises :class:`ReportError` if there is nothing."""
    paper_rows = reader.query(
        "SELECT regime, n_train, arm, controller, n_seeds, final_val_acc, final_val_acc_std, max_val_acc, "
        "max_val_acc_std, train_acc, train_acc_std FROM paper_table"
    ).rows
    running_rows = reader.query(
        """
        SELECT r.run_id, r.regime, r.arm, r.controller, r.seed, count(e.epoch), r.epochs,
               arg_max(e.val_acc, e.epoch), max(e.val_acc)
        FROM runs r LEFT JOIN epochs e USING (run_id)
        WHERE r.status = 'running'
        GROUP BY ALL ORDER BY min(r.started_at), r.run_id
        """
    ).rows
    if not paper_rows and not running_rows:
        raise ReportError("the database holds no completed or running run yet")
    curves = {column: _curves(reader, column) for column in ("val_acc", "lr", "dropout")}
    running: dict[str, RunningCurve] = {}
    order: dict[str, int] = {}
    for run_id, regime, n_train, label, seed, epoch, val_acc, lr, dropout in reader.query(
        """
        SELECT r.run_id, r.regime, r.n_train, CASE WHEN r.arm = 'baseline' THEN 'baseline' ELSE r.controller END,
               r.seed, e.epoch, e.val_acc, e.lr, e.dropout
        FROM epochs e JOIN runs r USING (run_id)
        WHERE r.status = 'running'
        ORDER BY r.n_train DESC, r.started_at, e.epoch
        """
    ).rows:
        empty = {"val_acc": [], "lr": [], "dropout": []}
        curve = running.setdefault(run_id, RunningCurve(regime, label, seed, [], empty))
        curve.epochs.append(epoch)
        for column, value in (("val_acc", val_acc), ("lr", lr), ("dropout", dropout)):
            curve.values[column].append(value)
        order[regime] = n_train
    n_train_of = {regime: n for regime, n, *_ in paper_rows} | order
    regimes = sorted(
        {r for r, _ in curves["val_acc"].by_group} | {c.regime for c in running.values()},
        key=lambda regime: -n_train_of.get(regime, 0),
    )
    timeline = []
    for run_id, regime, controller, seed, status in reader.query(
        """
        SELECT run_id, regime, controller, seed, status FROM runs
        WHERE arm = 'guided' AND status IN ('completed', 'running')
        ORDER BY status = 'running' DESC, n_train DESC, controller, seed LIMIT ?
        """,
        [MAX_TIMELINE_RUNS],
    ).rows:
        points = reader.query(
            """
            SELECT e.epoch, e.val_acc, d.fallback, d.valid, rf.verdict,
                   d.lr_after <> d.lr_before OR d.dropout_after <> d.dropout_before
            FROM epochs e
            LEFT JOIN decision_outcomes d ON d.run_id = e.run_id AND d.epoch = e.epoch
            LEFT JOIN reflections rf ON rf.run_id = e.run_id AND rf.about_epoch = e.epoch
            WHERE e.run_id = ? ORDER BY e.epoch
            """,
            [run_id],
        ).rows
        if points:
            timeline.append(TimelineRun(run_id, regime, controller, seed, status, points))
    source = f"the live recorder (pid {reader.pid}), as of its last commit" if reader.live else "the database file"
    return ReportData(paper_rows, running_rows, curves, list(running.values()), regimes, timeline, source)


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


def validation_figure(data: ReportData):
    """Validation accuracy per epoch: per regime, a mean line and min–max band per controller over the
    completed seeds, and a dashed line per run still going."""
    plt, fig, axes = _figure(len(data.regimes))
    for ax, regime in zip(axes, data.regimes):
        for (r, label), points in data.curves["val_acc"].by_group.items():
            if r == regime:
                epochs, mean, low, high = zip(*points)
                line = ax.plot(epochs, mean, label=label, linewidth=1.5)[0]
                ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        for run in data.running:
            if run.regime == regime:
                ax.plot(run.epochs, run.values["val_acc"], linestyle="--", marker=".",
                        label=f"{run.label}, seed {run.seed} (running)")  # fmt: skip
        ax.set_title(f"regime {regime}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _suptitle(fig, "Validation accuracy per epoch (line: mean over seeds, band: min–max)")
    return plt, fig


def hyperparameter_figure(data: ReportData):
    """The learning rate and dropout each controller chose, per regime (mean over seeds; dashed: running)."""
    plt, fig, axes = _figure(2 * len(data.regimes), height=3.0)
    for i, regime in enumerate(data.regimes):
        for ax, column, name in ((axes[2 * i], "lr", "learning rate"), (axes[2 * i + 1], "dropout", "dropout")):
            for (r, label), points in data.curves[column].by_group.items():
                if r == regime:
                    epochs, mean, _, _ = zip(*points)
                    ax.step(epochs, mean, where="post", label=label)
            for run in data.running:
                if run.regime == regime:
                    ax.step(run.epochs, run.values[column], where="post", linestyle="--",
                            label=f"{run.label}, seed {run.seed} (running)")  # fmt: skip
            ax.set_title(f"regime {regime}: {name}")
            ax.set_xlabel("epoch (value used during it)")
            if column == "lr":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    _suptitle(fig, "Hyperparameters the controllers chose (mean over seeds)")
    return plt, fig


def decision_figure(data: ReportData):
    """Each guided run's validation accuracy with its decisions, coloured by the verdict on them."""
    plt, fig, axes = _figure(len(data.timeline))
    for ax, run in zip(axes, data.timeline):
        epochs = [p[0] for p in run.points]
        ax.plot(epochs, [p[1] for p in run.points], color="black", linewidth=1, zorder=1)
        for epoch, val_acc, fallback, valid, verdict, changed in run.points:
            marker = "x" if fallback else ("o" if valid in (True, None) else "s")
            size = 60 if changed else 25
            ax.scatter([epoch], [val_acc], c=VERDICT_COLOURS.get(verdict, "tab:blue"), marker=marker, s=size, zorder=2)
        running = " (running)" if run.status == "running" else ""
        ax.set_title(f"{run.regime} · {run.controller} · seed {run.seed}{running}", fontsize=10)
        ax.set_xlabel("epoch (decision made after it)")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=v) for v, c in VERDICT_COLOURS.items()]
    handles += [
        plt.Line2D([], [], color="tab:blue", marker="o", linestyle="", label="not judged"),
        plt.Line2D([], [], color="black", marker="s", linestyle="", label="repaired"),
        plt.Line2D([], [], color="black", marker="x", linestyle="", label="fallback"),
        plt.Line2D([], [], color="black", marker="o", markersize=9, linestyle="", label="changed lr/dropout"),
    ]
    renderer = fig.canvas.get_renderer()
    for ncol in range(len(handles), 0, -1):  # as many columns as the figure's width holds
        legend = fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8)
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.96 * fig.bbox.width:
            break
        legend.remove()
    _suptitle(fig, "Decisions and the verdicts on them")
    return plt, fig


def write_report(db: Path, out: Path) -> tuple[list[Path], list[str]]:
    """The table and figures for what ``db`` holds (completed runs; runs still going are listed and
    drawn dashed): the files written, and notes on what could not be drawn."""
    with open_reader(db) as reader:
        data = read_report_data(reader)
    text = f"# ReflectNet results\n\nFrom `{db}`, read from {data.source}.\n\n"
    text += paper_table_markdown(data.paper_rows) if data.paper_rows else "No completed run yet."
    if data.running_rows:
        text += "\n\n## Runs in progress\n\n" + running_table_markdown(data.running_rows)
    try:
        out.mkdir(parents=True, exist_ok=True)
        files, notes = [out / "paper_table.md"], []
        files[0].write_text(text + "\n")
    except OSError as exc:
        raise ReportError(f"--out {out}: cannot write the report there: {exc.strerror}") from None
    if not data.regimes:
        notes.append("no epoch recorded yet: no figures")
        return files, notes
    files.append(save_figure(*validation_figure(data), out / "validation_accuracy.png"))
    files.append(save_figure(*hyperparameter_figure(data), out / "hyperparameters.png"))
    if data.timeline:
        files.append(save_figure(*decision_figure(data), out / "decisions.png"))
    else:  # e.g. a baseline-only database: the table and curves still stand
        notes.append("no completed or running guided run to draw decisions for")
    return files, notes
