"""Shared words and shapes of the report's tables: Markdown tables, numbers, start and setting labels, and the
cells of :class:`storage.results.RunResult` rows in table order with their names."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from storage.results import RunResult


def markdown_table(columns: list[str], rows: list[tuple]) -> str:
    """``rows`` as a Markdown table (floats to 4 significant digits, NaN and NULL as empty cells)."""

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.4g}"
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def num(value: float | None) -> str:
    """A metric value for a table: 4 decimals, 2 from 100 up (returns, RMSE in target units); empty for NULL."""
    if value is None:
        return ""
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.2f}" if abs(value) >= 100 else f"{value:.4f}"


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of two or more ``values`` (NaN where one is NaN: a diverged run)."""
    import numpy as np

    return float(np.mean(values)), float(np.std(values, ddof=1))


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` of ``values`` (the mean alone for one value; empty for none)."""
    if not values:
        return ""
    if len(values) == 1:
        return num(values[0])
    mean, sd = mean_sd(values)
    return f"{num(mean)} ± {num(sd)}"


def start_label(start: str) -> str:
    """A start's words: "default" for ``{}``, else ``knob=value`` pairs."""
    knobs = json.loads(start)
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in knobs.items()) or "default"


def setting_label(setting: str) -> str:
    """A setting's words: ``epochs 3; batch_size=64``."""
    what = json.loads(setting)
    parts = [f"epochs {what['epochs']}"] if "epochs" in what else []
    parts += [f"{k}={v}" for k, v in sorted((what.get("task_options") or {}).items())]
    return "; ".join(parts) or "task defaults"


def _short(value, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def model_labels(cells: Iterable[RunResult]) -> dict[tuple, str]:
    """cell key -> the arm's name in a table; where one controller ran under several variants (instructions,
    nodes, model), each is named with the fields in which it differs from the others, so none is hidden."""
    cells = list(cells)
    variants: dict[tuple, dict[str, dict]] = {}
    for run in cells:
        variants.setdefault((run.arm, run.controller), {})[run.variant] = json.loads(run.variant)
    labels: dict[tuple, str] = {}
    for run in cells:
        same = variants[(run.arm, run.controller)]
        label = run.label
        if len(same) > 1:
            keys = sorted({k for v in same.values() for k in v if len({_short(w.get(k)) for w in same.values()}) > 1})
            mine = json.loads(run.variant)
            detail = ", ".join(f"{k}={_short(mine.get(k))}" for k in keys)
            label = f"{label[:-1]}; {detail})" if label.endswith(")") else f"{label} ({detail})"
        labels[run.cell_key] = label
    return labels


_ARM_ORDER = {"baseline": 0, "aa": 1, "guided": 2}


def cell_order(run: RunResult) -> tuple:
    """Largest budget first, then regime, default start first, baseline, A/A, then controllers by name."""
    return -run.n_train, run.regime, run.start != "{}", run.start, _ARM_ORDER.get(run.arm, 3), run.controller, run.variant


def group_cells(runs: list[RunResult]) -> dict[tuple, list[RunResult]]:
    """The counted runs by cell, in table order, each cell's runs by seed."""
    cells: dict[tuple, list[RunResult]] = {}
    for run in sorted((r for r in runs if r.counted), key=lambda r: (cell_order(r), r.seed)):
        cells.setdefault(run.cell_key, []).append(run)
    return cells
