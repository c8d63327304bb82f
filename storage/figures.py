"""The report's figures (matplotlib, imported only when drawing): per task its objective per epoch with the
reference as a dotted line, the knob trajectories the controllers chose, and the decision timeline coloured by
verdict, each in panels of the runs one cell of the tables pools (see :mod:`storage.report_data`). Every figure is laid out at the size it is written, title, axes and legend inside."""

from __future__ import annotations

import functools
import math
import textwrap
from pathlib import Path

from storage.report_data import TaskReport, metric_label

VERDICT_COLOURS = {"beneficial": "tab:green", "harmful": "tab:red", "neutral": "tab:gray"}
DPI = 120  # figures are laid out at the resolution they are written with
LABEL_CHARS = 32  # an instruction's label at fontsize 7 spans about a third of a panel
EXCERPT_CHARS = 18  # of a text not understood, beside "not understood: "
# The said-back line's "when", shortened for a label: what moves matters more than the rest of a long line.
LABEL_WHEN = {" at the next decision, then kept": "", " at every decision": ", every decision"}
LABEL_STEP_PT = 11  # the vertical distance between staggered labels, in points


# --------------------------------------------------------------------------- instruction labels


@functools.cache
def _default_font_codepoints() -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(font_manager.findfont(font_manager.FontProperties())).get_charmap())


def font_draws(text: str) -> bool:
    """Whether matplotlib's default font has a glyph for every character of ``text`` (DejaVu Sans draws Latin,
    Greek and Cyrillic, not CJK: those would be boxes)."""
    codepoints = _default_font_codepoints()
    return all(ord(c) in codepoints or c.isspace() for c in text)


def shortened(text: str, limit: int = LABEL_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters with "..." when longer."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


def instruction_label(text: str, read_as: str | None, draws=font_draws) -> str:
    """The timeline's label of an instruction: the reading said back when it was given, without its "read as: "
    (``learning_rate × 0.5 at the next decision, then kept``, shortened); "not understood" with a short excerpt of
    the text; the text itself for one recorded before readings were. What the font cannot draw (``draws``; CJK
    text in the default font) is left out, so that no label is a row of boxes."""
    excerpt = shortened(text, EXCERPT_CHARS)
    if read_as is not None and read_as.startswith("read as:"):
        reading = read_as.removeprefix("read as:").strip()
        for when, short in LABEL_WHEN.items():
            reading = reading.replace(when, short)
        reading = shortened(reading)
        return reading if draws(reading) else "".join(c for c in reading if draws(c))
    if read_as is not None:  # "not understood: ..."
        return f"not understood: '{excerpt}'" if draws(excerpt) else "not understood"
    return shortened(text) if draws(text) else "instruction"


def label_levels(epochs: list[float], span: float) -> list[int]:
    """The row (0 lowest) of each instruction label drawn at ``epochs`` (in the order given) on a panel ``span``
    epochs wide: a label takes the lowest row not held by one within two thirds of the panel before it (a label
    spans about a third, growing left or right towards the middle), so that labels of instructions close together
    stack instead of overlapping."""
    reach = max(span, 1.0) * 2 / 3
    placed: list[tuple[float, int]] = []
    levels = []
    for epoch in epochs:
        held = {level for at, level in placed if abs(epoch - at) < reach}
        level = next(i for i in range(len(placed) + 1) if i not in held)
        placed.append((epoch, level))
        levels.append(level)
    return levels


# --------------------------------------------------------------------------- figures


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display is needed or used)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(n: int, height: float = 3.2):
    """A figure of ``n`` panels, three to a row, laid out by matplotlib's constrained layout."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()

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


def _panel_title(ax, text: str, fontsize: float | None = None) -> None:
    """A panel title wrapped at word boundaries until it fits the panel's width, so that it never runs into the
    panel beside it."""
    title = ax.set_title(text, fontsize=fontsize)
    renderer = ax.figure.canvas.get_renderer()
    width = len(text)
    while title.get_window_extent(renderer).width > ax.get_window_extent(renderer).width and width > 10:
        width = int(width * 0.85)
        title.set_text(textwrap.fill(text, width))


LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def curve_styles(groups: list[tuple[str, list]]) -> list[tuple[str, dict]]:
    """For the curves of one panel, (label, plot keyword arguments): each a line style and marker of its own, so
    that curves drawn on top of each other stay visible, and a curve identical to an earlier one says so in its
    label ("= baseline"), since it hides it exactly."""
    styles = []
    for i, (label, points) in enumerate(groups):
        same = next((other for other, theirs in groups[:i] if theirs == points), None)
        every = max(1, len(points) // 10)  # about ten markers whatever the run's length
        kwargs = {"linestyle": LINE_STYLES[i % len(LINE_STYLES)], "marker": MARKERS[i % len(MARKERS)],
                  "markevery": (i % every, every), "markersize": 4}  # fmt: skip
        styles.append((f"{label} (= {same})" if same else label, kwargs))
    return styles


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _running_label(run) -> str:
    return f"{run.label}, seed {run.seed} (running)"


def label_colours(task: TaskReport) -> dict[str, str]:
    """A colour per cell name over all of the task's panels, so that a cell keeps its colour from panel to panel
    (the colour cycle's ten, in the order the names first appear; repeated beyond ten, the style tells apart)."""
    names = dict.fromkeys(c.label for p in task.panels for c in [*p.curves, *p.running])
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def objective_figure(task: TaskReport):
    """The task's objective per epoch: a panel per setting, regime and start (:class:`storage.report_data.Panel`),
    in it a mean line and min–max band per cell over its counted seeds, a dashed line per run still going, and a
    dotted line per reference the task reports for the regime."""
    plt, fig, axes = _figure(len(task.panels))
    colours = label_colours(task)
    for ax, panel in zip(axes, task.panels):
        groups = [(curve.label, curve.points["objective"]) for curve in panel.curves if "objective" in curve.points]
        for (shown, kwargs), (label, points) in zip(curve_styles(groups), groups):
            epochs, mean, low, high = zip(*points)
            ax.plot(epochs, mean, label=shown, linewidth=1.5, color=colours[label], **kwargs)
            ax.fill_between(epochs, low, high, color=colours[label], alpha=0.2)
        for run in panel.running:
            ax.plot(run.epochs, [math.nan if v is None else v for v in run.values["objective"]], linestyle="--",
                    marker=".", color=colours[run.label], label=_running_label(run))  # fmt: skip
        for r, _, _, label, n, value, _ in task.references:
            if r == panel.regime and value is not None:
                seeds = f", mean of {n} seeds" if n > 1 else ""
                ax.axhline(value, color="black", linestyle=":", linewidth=1.2, label=f"{label} (reference{seeds})")
        _panel_title(ax, panel.title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{task.label} ({task.direction})")
        ax.grid(alpha=0.3)
        _legend(ax)
    _suptitle(fig, f"{task.label[:1].upper()}{task.label[1:]} per epoch, {task.direction} "
                   f"(line: mean over seeds, band: min–max)")  # fmt: skip
    return plt, fig


def hyperparameter_figure(task: TaskReport):
    """The value of each knob the controllers chose, a row of panels per setting, regime and start (mean over the
    counted seeds of each cell; dashed: running)."""
    knobs = task.knobs or ["learning_rate"]
    plt, fig, axes = _figure(len(knobs) * len(task.panels), height=3.0)
    colours = label_colours(task)
    for i, panel in enumerate(task.panels):
        for j, knob in enumerate(knobs):
            ax = axes[len(knobs) * i + j]
            values: list[float] = []
            groups = [(curve.label, curve.points[knob]) for curve in panel.curves if knob in curve.points]
            for (shown, kwargs), (label, points) in zip(curve_styles(groups), groups):
                epochs, mean, _, _ = zip(*points)
                ax.step(epochs, mean, where="post", label=shown, color=colours[label], **kwargs)
                values += [v for v in mean if v is not None]
            for run in panel.running:
                if knob in run.values:
                    ax.step(run.epochs, [math.nan if v is None else v for v in run.values[knob]], where="post",
                            linestyle="--", color=colours[run.label], label=_running_label(run))  # fmt: skip
                    values += [v for v in run.values[knob] if v is not None]
            _panel_title(ax, f"{panel.title}: {metric_label(knob)}")
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


TIMELINE_PANELS = 12  # guided runs per decision figure; more runs go on further pages, every one drawn


def decision_figures(task: TaskReport):
    """The decision timeline of every guided run, :data:`TIMELINE_PANELS` runs a figure (pages), each titled with
    the runs it holds when there are several pages. Yields (plt, fig)."""
    runs = task.timeline
    pages = math.ceil(len(runs) / TIMELINE_PANELS)
    for page in range(pages):
        chunk = runs[page * TIMELINE_PANELS : (page + 1) * TIMELINE_PANELS]
        first = page * TIMELINE_PANELS + 1
        part = f" (runs {first}–{first + len(chunk) - 1} of {len(runs)})" if pages > 1 else ""
        yield decision_figure(task, chunk, part)


def decision_figure(task: TaskReport, runs=None, part: str = ""):
    """Each guided run's objective (``runs``, default all of the task's) with its decisions, coloured by the
    verdict on them, and a dashed line where a user's instruction first shaped a decision."""
    runs = task.timeline if runs is None else runs
    plt, fig, axes = _figure(len(runs))
    for ax, run in zip(axes, runs):
        epochs = [p[0] for p in run.points]
        ax.plot(epochs, [p[1] for p in run.points], color="black", linewidth=1, zorder=1)
        for epoch, value, fallback, valid, verdict, changed in run.points:
            marker = "x" if fallback else ("o" if valid in (True, None) else "s")
            size = 60 if changed else 25
            ax.scatter([epoch], [value], c=VERDICT_COLOURS.get(verdict, "tab:blue"), marker=marker, s=size, zorder=2)
        marks = sorted(run.instructions, key=lambda mark: mark[0])
        levels = label_levels([mark[0] for mark in marks], epochs[-1] - epochs[0])
        # The decision after this epoch was the first the instruction shaped.
        for (epoch, text, read_as), level in zip(marks, levels):
            ax.axvline(epoch, color="tab:purple", linestyle="--", linewidth=1, zorder=0)
            label = instruction_label(text, read_as)
            right = epoch > (epochs[0] + epochs[-1]) / 2  # the label grows towards the middle, inside the panel
            ax.annotate(label, (epoch, 0.0), xycoords=("data", "axes fraction"),
                        xytext=(-3 if right else 3, 4 + LABEL_STEP_PT * level),
                        textcoords="offset points", ha="right" if right else "left", fontsize=7, color="tab:purple",
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})  # fmt: skip
        running = " (running)" if run.status == "running" else ""
        _panel_title(ax, f"{run.where} · {run.label} · seed {run.seed}{running}", fontsize=10)
        ax.set_xlabel("epoch (decision made after it)")
        ax.set_ylabel(f"{task.label} ({task.direction})")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=v) for v, c in VERDICT_COLOURS.items()]
    handles += [
        plt.Line2D([], [], color="tab:blue", marker="o", linestyle="", label="not judged"),
        plt.Line2D([], [], color="black", marker="s", linestyle="", label="repaired"),
        plt.Line2D([], [], color="black", marker="x", linestyle="", label="fallback"),
        plt.Line2D([], [], color="black", marker="o", markersize=9, linestyle="", label="changed a hyperparameter"),
        plt.Line2D([], [], color="tab:purple", linestyle="--", label="instruction (first decision it shaped)"),
    ]
    renderer = fig.canvas.get_renderer()
    for ncol in range(len(handles), 0, -1):  # as many columns as the figure's width holds
        legend = fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8)
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.96 * fig.bbox.width:
            break
        legend.remove()
    _suptitle(fig, f"Decisions and the verdicts on them{part}")
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


RERUN_ALPHA = 0.25  # the re-run interval's bar: pale, behind the CI it is wider than


def difference_figure(task: str, objective: str, settings: list):
    """Each cell's mean paired difference to the baseline of the same seeds (signed: + is better) with its
    bootstrap 95 % interval and, as a pale bar, where a re-run's mean is expected to land, over a grey band of its
    A/A noise floor: a panel per regime and start (and setting, with several
    :class:`storage.report_stats.SettingStats`), each on its own scale, a row per guided or A/A cell. One
    shared scale made MNIST-100's bad-start floor of +-84 points flatten the good start's intervals of a point into
    dots. None when no cell pairs."""
    from storage.report_format import setting_label, start_label

    plt = _pyplot()

    panels: dict[str, list] = {}
    for s in settings:
        setting = s.runs[0].setting
        for key, cell in s.stats.items():
            if cell.comparison is not None:
                first = cell.runs[0]
                title = f"regime {first.regime} · start {start_label(first.start)}"
                title += f" · {setting_label(setting)}" if len(settings) > 1 else ""
                floor = s.floors[(first.regime, first.start)][0]
                panels.setdefault(title, []).append((f"{s.labels[key]} (n={cell.comparison.n})", cell.comparison, floor))
    if not panels:
        return None
    heights = [len(rows) + 1.5 for rows in panels.values()]  # a row per cell, and the panel's title and ticks
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.0 + 0.35 * sum(heights)), dpi=DPI, squeeze=False,
                             layout="constrained", gridspec_kw={"height_ratios": heights})  # fmt: skip
    for ax, (title, rows) in zip(axes.flat, panels.items()):
        _difference_panel(ax, rows)
        ax.set_title(title, fontsize=9)
    axes.flat[-1].set_xlabel(f"Δ final {metric_label(objective)} vs. the baseline of the same seed (+ is better)")
    handles = [
        plt.Line2D([], [], color="tab:blue", marker="o", label="mean Δ, 95 % bootstrap CI"),
        plt.Line2D([], [], color="tab:blue", marker="o", markerfacecolor="white", linestyle="", label="1 seed: no CI"),
        plt.Line2D([], [], color="tab:blue", alpha=RERUN_ALPHA, linewidth=6, label="a re-run's mean lands (95 %)"),
        plt.Rectangle((0, 0), 1, 1, color="tab:gray", alpha=0.25, label="A/A noise floor"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8)
    _suptitle(fig, f"Task {task}: paired differences to the baseline")
    return plt, fig


def _difference_panel(ax, rows: list) -> None:
    """One panel of :func:`difference_figure`: ``rows`` of (label, comparison, A/A floor or None), top to bottom."""
    for i, (_, c, floor) in enumerate(rows):
        y = len(rows) - 1 - i
        if floor is not None:
            ax.fill_betweenx([y - 0.4, y + 0.4], -floor, floor, color="tab:gray", alpha=0.25, linewidth=0)
        if c.rerun is not None:
            ax.plot(c.rerun, [y, y], color="tab:blue", alpha=RERUN_ALPHA, linewidth=6, solid_capstyle="butt")
        if c.ci is None:
            ax.plot([c.mean], [y], marker="o", markerfacecolor="white", color="tab:blue", linestyle="")
        else:
            # max: equal differences give an interval equal to the mean but for the last bit of rounding
            xerr = [[max(0.0, c.mean - c.ci[0])], [max(0.0, c.ci[1] - c.mean)]]
            ax.errorbar([c.mean], [y], xerr=xerr, fmt="o", color="tab:blue", capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [label for label, _, _ in reversed(rows)], fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.grid(axis="x", alpha=0.3)
