"""Whether a re-run of study cells on seeds of one's own lands where the published study says it should.

Each re-run cell (a guided or A/A arm paired with its baseline) is matched to the published cell of the same
protocol, the seed apart (:attr:`storage.results.RunResult.cell_key`), and its mean paired difference is judged
against the published cell's re-run interval for as many seeds as the re-run has
(:func:`storage.statistics.rerun_interval`): the 95 % prediction interval of a fresh mean, not the published
confidence interval, which holds a fresh mean less often. Each cell lands outside its 95 % interval with
probability 0.05 by chance alone where the differences are roughly normal (a rare collapse or rescue, which the
published seeds may hold no case of, lands outside more often); the cells of one start share their baseline seeds,
so misses are not independent.
A cell that shares seeds with its published cell is not a fresh re-run and is not judged.

A re-run of k cells, each judged at 95 %, lands outside somewhere far more often than 5 % (up to 1 - 0.95^k: 40 %
at k = 10). Whether the table *as a whole* replicates is therefore judged with Bonferroni's intervals, each at
1 - 0.05/k, which hold all k re-run means together with probability at least 95 % whatever the dependence between
the cells (Bonferroni's inequality; the same family-wise reasoning as the Holm-corrected p-values of the report).
Both verdicts are shown. Used by ``run.py report --against`` and by ``run.py study`` on seeds of one's own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from storage import statistics as st
from storage.report_format import markdown_table, start_label
from storage.report_stats import SettingStats, interval_text, signed_text


FLOAT_SLACK = 1e-9  # relative: a mean that differs from an interval's end by rounding alone is not outside it


@dataclass(frozen=True)
class ReplicatedCell:
    """One re-run cell beside its published one: the re-run's seeds and mean paired difference (signed, + is
    better, the objective's units), the published cell's seeds and mean (None: no published cell of that protocol),
    where a re-run of ``seeds`` seeds is expected to land (None: no published cell, or one of a single seed) and
    the seeds both cells ran."""

    task: str
    regime: str
    start: str
    label: str
    seeds: int
    mean: float
    published_seeds: int | None
    published_mean: float | None
    interval: tuple[float, float] | None
    shared_seeds: tuple[int, ...] = ()
    table_interval: tuple[float, float] | None = None

    @property
    def judged(self) -> bool:
        """Whether the cell has a verdict at all: a published cell on other seeds, with an interval."""
        return self.verdict in ("inside", "outside")

    @property
    def verdict(self) -> str:
        """'inside' or 'outside' the published re-run interval, or why there is none."""
        return self._judged(self.interval)

    @property
    def table_verdict(self) -> str:
        """'inside' or 'outside' the Bonferroni interval of the whole re-run (:attr:`table_interval`), or why
        there is none."""
        return self._judged(self.table_interval)

    def _judged(self, interval: tuple[float, float] | None) -> str:
        if self.published_seeds is None:
            return "not in the published results"
        if self.shared_seeds:
            return f"not a fresh re-run: shares seed(s) {', '.join(map(str, self.shared_seeds))}"
        if interval is None:
            return "no interval (1 published seed)"
        low, high = interval
        slack = FLOAT_SLACK * max(1.0, abs(low), abs(high))  # an interval of width 0: arms that never acted
        return "inside" if low - slack <= self.mean <= high + slack else "outside"


def replicated_cells(rerun: dict[tuple, SettingStats], published: dict[tuple, SettingStats]) -> list[ReplicatedCell]:
    """Every paired cell of ``rerun`` beside the published cell of the same protocol, with its 95 % re-run interval
    and, once the number k of judged cells is known, its Bonferroni interval at 1 - 0.05/k; both arguments are
    :func:`storage.report_stats.all_stats` results, keyed (task, objective, setting)."""
    found = []  # (cell, the published cell's paired differences or None)
    for setting, stats in rerun.items():
        theirs = published.get(setting)
        for key, cell in stats.stats.items():
            mine = cell.comparison
            if mine is None:
                continue
            match = theirs.stats.get(key) if theirs is not None else None
            before = match.comparison if match is not None else None
            published_half = (None, None, None, ())
            if before is not None:
                shared = tuple(sorted({r.seed for r in cell.runs} & {r.seed for r in match.runs}))
                published_half = (before.n, before.mean, st.rerun_interval(before.differences, mine.n), shared)
            first = cell.runs[0]
            found.append((ReplicatedCell(first.task, first.regime, first.start, stats.labels[key], mine.n, mine.mean,
                                         *published_half), before.differences if before is not None else None))  # fmt: skip
    judged = sum(c.judged for c, _ in found)
    level = 1 - (1 - st.CONFIDENCE) / max(judged, 1)
    return [replace(c, table_interval=st.rerun_interval(d, c.seeds, level)) if judged and d is not None else c
            for c, d in found]  # fmt: skip


def replication_markdown(cells: list[ReplicatedCell], published_name: str) -> str:
    """The re-run against ``published_name`` (the published export) as Markdown: a row per cell and the count of
    cells inside their interval."""
    judged = [c for c in cells if c.judged]
    inside = sum(c.verdict == "inside" for c in judged)
    body = [(c.task, c.regime, start_label(c.start), c.label, c.seeds, signed_text(c.mean), c.published_seeds or "",
             signed_text(c.published_mean), interval_text(c.interval, c.published_seeds or 0), c.verdict)
            + ((interval_text(c.table_interval, c.published_seeds or 0), c.table_verdict if c.judged else "")
               if judged else ())
            for c in cells]  # fmt: skip
    columns = ["Task", "Regime", "Start", "Model", "Seeds", "Δ final (+ better)", "Published seeds", "Published Δ",
               "Re-run lands in (95 %)", "Verdict"]  # fmt: skip
    columns += [f"All {len(judged)} together (95 %, Bonferroni)", "Verdict (together)"] if judged else []
    text = f"# Re-run against {published_name}\n\n" + markdown_table(columns, body) + "\n\n"
    if judged:
        text += _judged_summary(judged, inside)
    else:
        text += ("* **No cell judged**: none matches a published cell run on other seeds (another number of epochs, "
                 "other task options or another controller variant is another protocol).\n")  # fmt: skip
    text += ("* Δ: the final objective minus the baseline's of the same seed, + better; the interval: the published "
             "mean ± t(n−1)·s·√(1/n + 1/m), n published seeds, m here.\n")  # fmt: skip
    return text


def _judged_summary(judged: list[ReplicatedCell], inside: int) -> str:
    """The Markdown lines under the table: cells inside at 95 % each, the binomial chance of the misses seen, and
    the whole re-run against the Bonferroni intervals."""
    k, outside = len(judged), len(judged) - inside
    together = sum(c.table_verdict == "inside" for c in judged)
    chance = (f"outside; {outside} or more outside has probability {st.misses_by_chance(outside, k):.2f} if the "
              "cells were independent (binomial upper tail)" if outside else "outside; none is")  # fmt: skip
    ending = ("every cell landed where the published table says a re-run should" if together == k
              else "the cells outside did not land where the published table says a re-run should")  # fmt: skip
    return (f"* {inside} of {k} cells inside the published re-run interval for their number of seeds (95 %: each "
            "cell lands outside with probability 0.05 by chance alone where the differences are roughly normal; a "
            "rare collapse or rescue lands outside more often; the cells of one start share their baseline seeds, so "
            "misses are not independent).\n"
            f"* By chance alone {(1 - st.CONFIDENCE) * k:.2f} of {k} cells are expected {chance}.\n"
            f"* **The re-run as a whole: {together} of {k} cells inside their Bonferroni interval** (each at "
            f"{100 * (1 - (1 - st.CONFIDENCE) / k):.4g} %, so that all {k} hold together with probability at least "
            f"95 % whatever the dependence between cells): {ending}.\n")  # fmt: skip
