"""Reading the database back: the paper's table in Markdown, figures for a paper, and ad-hoc SQL.

Everything here opens the database read-only, so it works beside a finished run and never changes a
record. Used by ``python run.py report`` and ``python run.py sql``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import duckdb

VERDICT_COLOURS = {"beneficial": "tab:green", "harmful": "tab:red", "neutral": "tab:gray"}


class ReportError(Exception):
    """A database that cannot be read or holds nothing to report: one line for the user."""


def connect_read_only(db: Path) -> duckdb.DuckDBPyConnection:
    if not db.is_file():
        raise ReportError(f"no database at {db}")
    try:
        return duckdb.connect(str(db), read_only=True)
    except duckdb.Error as exc:
        raise ReportError(f"cannot open {db}: {str(exc).splitlines()[0]}") from None


def markdown_table(columns: list[str], rows: list[tuple]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def run_sql(db: Path, query: str) -> str:
    """The answer to ``query`` as a Markdown table."""
    with connect_read_only(db) as con:
        try:
            cursor = con.execute(query)
            if cursor.description is None:
                return "(no result)"
            columns = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        except duckdb.Error as exc:
            raise ReportError(f"SQL error: {str(exc).splitlines()[0]}") from None
    return markdown_table(columns, rows) + f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})"


def _pm(mean: float, std: float | None, n: int) -> str:
    return f"{mean:.4f} ± {std:.4f}" if n > 1 and std is not None else f"{mean:.4f}"


def paper_table_markdown(con: duckdb.DuckDBPyConnection) -> str:
    rows = con.execute(
        "SELECT regime, n_train, arm, controller, n_seeds, final_val_acc, final_val_acc_std, max_val_acc, "
        "max_val_acc_std, train_acc, train_acc_std FROM paper_table"
    ).fetchall()
    if not rows:
        raise ReportError("the database holds no completed run yet")
    body = [
        (regime, f"{n_train}", "Baseline" if arm == "baseline" else f"Guided ({controller})", n,
         _pm(fv, fvs, n), _pm(mv, mvs, n), _pm(tv, tvs, n))
        for regime, n_train, arm, controller, n, fv, fvs, mv, mvs, tv, tvs in rows
    ]  # fmt: skip
    columns = ["Regime", "Train images", "Model", "Seeds", "Final Val Acc", "Max Val Acc", "Train Acc"]
    return markdown_table(columns, body) + "\n\nMean ± sample std over seeds; completed runs only."


@dataclass
class Curves:
    """Per (regime, arm/controller): epoch -> mean, min, max over seeds of one column."""

    by_group: dict[tuple[str, str], list[tuple[int, float, float, float]]]


def _curves(con: duckdb.DuckDBPyConnection, column: str) -> Curves:
    rows = con.execute(
        f"""
        SELECT r.regime, CASE WHEN r.arm = 'baseline' THEN 'baseline' ELSE r.controller END AS label,
               e.epoch, avg(e.{column}), min(e.{column}), max(e.{column}), any_value(r.n_train)
        FROM epochs e JOIN runs r USING (run_id)
        WHERE r.status = 'completed'
        GROUP BY ALL ORDER BY any_value(r.n_train) DESC, label, e.epoch
        """
    ).fetchall()
    grouped: dict[tuple[str, str], list] = {}
    for regime, label, epoch, mean, low, high, _ in rows:
        grouped.setdefault((regime, label), []).append((epoch, mean, low, high))
    return Curves(grouped)


def _regimes(curves: Curves) -> list[str]:
    return list(dict.fromkeys(regime for regime, _ in curves.by_group))


def _subplots(n: int, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, height * rows), squeeze=False)
    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat)


def plot_validation(con, path: Path) -> Path:
    curves = _curves(con, "val_acc")
    regimes = _regimes(curves)
    plt, fig, axes = _subplots(len(regimes))
    for ax, regime in zip(axes, regimes):
        for (r, label), points in curves.by_group.items():
            if r != regime:
                continue
            epochs, mean, low, high = zip(*points)
            line = ax.plot(epochs, mean, label=label, linewidth=1.5)[0]
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        ax.set_title(f"regime {regime}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Validation accuracy per epoch (line: mean over seeds, band: min–max)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_hyperparameters(con, path: Path) -> Path:
    lr, dropout = _curves(con, "lr"), _curves(con, "dropout")
    regimes = _regimes(lr)
    plt, fig, axes = _subplots(2 * len(regimes), height=3.0)
    for i, regime in enumerate(regimes):
        for ax, curves, name in ((axes[2 * i], lr, "learning rate"), (axes[2 * i + 1], dropout, "dropout")):
            for (r, label), points in curves.by_group.items():
                if r == regime:
                    epochs, mean, _, _ = zip(*points)
                    ax.step(epochs, mean, where="post", label=label)
            ax.set_title(f"regime {regime}: {name}")
            ax.set_xlabel("epoch (value used during it)")
            if name == "learning rate":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Hyperparameters the controllers chose (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_decision_timeline(con, path: Path, max_runs: int = 6) -> Path:
    runs = con.execute(
        """
        SELECT run_id, regime, controller, seed FROM runs
        WHERE arm = 'guided' AND status = 'completed'
        ORDER BY n_train DESC, controller, seed LIMIT ?
        """,
        [max_runs],
    ).fetchall()
    if not runs:
        raise ReportError("no completed guided run to draw decisions for")
    plt, fig, axes = _subplots(len(runs))
    for ax, (run_id, regime, controller, seed) in zip(axes, runs):
        points = con.execute(
            """
            SELECT e.epoch, e.val_acc, d.fallback, d.valid, rf.verdict, d.lr_after <> d.lr_before OR d.dropout_after <> d.dropout_before
            FROM epochs e
            LEFT JOIN decision_outcomes d ON d.run_id = e.run_id AND d.epoch = e.epoch
            LEFT JOIN reflections rf ON rf.run_id = e.run_id AND rf.about_epoch = e.epoch
            WHERE e.run_id = ? ORDER BY e.epoch
            """,
            [run_id],
        ).fetchall()
        epochs = [p[0] for p in points]
        ax.plot(epochs, [p[1] for p in points], color="black", linewidth=1, zorder=1)
        for epoch, val_acc, fallback, valid, verdict, changed in points:
            marker = "x" if fallback else ("o" if valid else "s")
            size = 60 if changed else 25
            ax.scatter([epoch], [val_acc], c=VERDICT_COLOURS.get(verdict, "tab:blue"), marker=marker, s=size, zorder=2)
        ax.set_title(f"{regime} · {controller} · seed {seed}", fontsize=10)
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
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle("Decisions and the verdicts on them")
    legend_height = 0.5 / fig.get_figheight()  # two legend rows, in figure fractions
    fig.tight_layout(rect=(0, legend_height + 0.02, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(db: Path, out: Path) -> tuple[list[Path], list[str]]:
    """The table and figures for everything completed in ``db``: the files written, and notes on
    what could not be drawn."""
    with connect_read_only(db) as con:
        table = paper_table_markdown(con)
        try:
            out.mkdir(parents=True, exist_ok=True)
            files, notes = [out / "paper_table.md"], []
            files[0].write_text(f"# ReflectNet results\n\nFrom `{db}`.\n\n{table}\n")
        except OSError as exc:
            raise ReportError(f"--out {out}: cannot write the report there: {exc.strerror}") from None
        files.append(plot_validation(con, out / "validation_accuracy.png"))
        files.append(plot_hyperparameters(con, out / "hyperparameters.png"))
        try:
            files.append(plot_decision_timeline(con, out / "decisions.png"))
        except ReportError as exc:  # e.g. a baseline-only database: the table and curves still stand
            notes.append(str(exc))
    return files, notes
