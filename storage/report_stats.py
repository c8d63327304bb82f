"""The report's statistics tables, from :class:`storage.results.RunResult` rows of one task and setting: each
cell paired against the baseline of the same seeds (:mod:`storage.statistics`), the A/A noise floor under the
table, a verdict per guided cell, cost beside quality, and the rescue rate of bad-start cells."""

from __future__ import annotations

import statistics as stdlib
from dataclasses import dataclass, replace

from storage import statistics as st
from storage.report_format import group_cells, markdown_table, model_labels, num, start_label
from storage.results import RunResult

GOOD_START = "{}"


@dataclass
class CellStats:
    """One cell of a statistics table: its runs, the baseline finals of the same seeds, and the comparison."""

    runs: list[RunResult]
    comparison: st.PairedComparison | None  # None: no baseline for any of its seeds (or the baseline itself)
    unpaired: int  # seeds of the cell without a counted baseline


def _finals(runs: list[RunResult], worst: float) -> list[float]:
    return st.worst_filled([r.final_objective for r in runs], worst)


def _pairs(cell: list[RunResult], baselines: dict[tuple, RunResult]) -> tuple[list[RunResult], list[RunResult]]:
    paired = [r for r in cell if r.pair_key in baselines]
    return paired, [baselines[r.pair_key] for r in paired]


def signed_text(value: float | None, digits: int = 4) -> str:
    """A signed difference as the tables print it: ``+0.0123`` (``+123.45`` from 100 on), '' for None."""
    if value is None:
        return ""
    return f"{value:+.{digits}f}" if abs(value) < 100 else f"{value:+.2f}"


def interval_text(ci: tuple | None, n: int) -> str:
    """An interval as the tables print it, ``[low, high]``; without one, why where it is the single seed (n = 1)."""
    if ci is None or ci[0] is None:
        return "1 seed: no interval" if n == 1 else ""
    return f"[{signed_text(ci[0])}, {signed_text(ci[1])}]"


def _p(p: float | None) -> str:
    return "" if p is None else f"{p:.3g}"


def _cost(runs: list[RunResult]) -> tuple[str, str, str, str]:
    """Mean model calls, tokens (prompt + completion), decision wait seconds and cost per run ('' without data)."""

    def mean(values) -> float | None:
        present = [v for v in values if v is not None]
        return stdlib.fmean(present) if present else None

    calls = mean(r.llm_calls for r in runs)
    tokens = mean(None if r.prompt_tokens is None else r.prompt_tokens + (r.completion_tokens or 0) for r in runs)
    wait, usd = mean(r.wait_s for r in runs), mean(r.cost_usd for r in runs)
    return ("" if calls is None else f"{calls:.1f}", "" if tokens is None else f"{tokens:.0f}",
            "" if wait is None else f"{wait:.2f}", "" if usd is None else f"{usd:.4f}")  # fmt: skip


def noise_floors(runs: list[RunResult], baselines: dict[tuple, RunResult], worst: float, mode: str) -> dict:
    """(regime, start) -> (A/A noise floor, number of A/A pairs) from the counted A/A runs (:func:`st.noise_floor`)."""
    floors = {}
    for regime, start in sorted({(r.regime, r.start) for r in runs}):
        aa = [r for r in runs if r.arm == "aa" and (r.regime, r.start) == (regime, start)]
        arm, base = _pairs(aa, baselines)
        diffs = [st.signed(a, b, mode) for a, b in zip(_finals(arm, worst), _finals(base, worst))]
        floors[(regime, start)] = (st.noise_floor(diffs), len(diffs))
    return floors


@dataclass
class SettingStats:
    """The statistics of one task and setting: its cells in table order with their names, each cell's paired
    comparison, the A/A noise floor per (regime, start), and the worst value a diverged run counts as."""

    runs: list[RunResult]
    cells: dict[tuple, list[RunResult]]
    stats: dict[tuple, CellStats]
    floors: dict[tuple[str, str], tuple[float | None, int]]
    labels: dict[tuple, str]
    worst: float
    mode: str
    rerun_seeds: int | None = None  # the seeds of the re-run the re-run intervals are for (None: each cell's own)


def setting_stats(runs: list[RunResult], task_runs: list[RunResult], mode: str,
                  rerun_seeds: int | None = None) -> SettingStats:
    """Pair every cell of one setting's counted ``runs`` with its baseline (``task_runs``: every counted run of the
    task, for the worst value a diverged run counts as); Holm's correction across the guided cells; re-run
    intervals for ``rerun_seeds`` fresh seeds (None: as many as each cell has; :func:`st.rerun_interval`)."""
    worst = st.worst_value([r.final_objective for r in task_runs], mode)
    baselines = {r.pair_key: r for r in runs if r.arm == "baseline"}
    cells = group_cells(runs)
    stats: dict[tuple, CellStats] = {}
    for key, cell in cells.items():
        arm, base = _pairs(cell, baselines) if cell[0].arm != "baseline" else ([], [])
        comparison = st.compare(_finals(arm, worst), _finals(base, worst), mode, rerun_seeds) if arm else None
        stats[key] = CellStats(cell, comparison, len(cell) - len(arm))
    guided = [k for k in stats if k[5] == "guided" and stats[k].comparison is not None]
    for key, p in zip(guided, st.holm([stats[k].comparison.p_value for k in guided])):
        stats[key].comparison = replace(stats[key].comparison, p_holm=p)
    labels = model_labels(c[0] for c in cells.values())
    floors = noise_floors(runs, baselines, worst, mode)
    return SettingStats(runs, cells, stats, floors, labels, worst, mode, rerun_seeds)


def all_stats(results: list[RunResult], rerun_seeds: int | None = None) -> dict[tuple[str, str, str], SettingStats]:
    """(task, objective, setting) -> its :class:`SettingStats`, over the counted runs of ``results``: computed once
    for the report's tables and figures (the bootstraps are what a report spends its time on); ``rerun_seeds`` as
    in :func:`setting_stats`."""
    counted = [r for r in results if r.counted]
    found = {}
    for task, objective, setting in sorted({(r.task, r.objective, r.setting) for r in counted}):
        task_runs = [r for r in counted if (r.task, r.objective) == (task, objective)]
        mine = [r for r in task_runs if r.setting == setting]
        found[(task, objective, setting)] = setting_stats(mine, task_runs, mine[0].mode, rerun_seeds)
    return found


def stats_markdown(s: SettingStats) -> str:
    """The statistics of one setting (see :func:`setting_stats`): the paired table, its notes and noise floors,
    and the rescue table."""
    runs, mode = s.runs, s.mode
    body = []
    for key, cell in s.stats.items():
        first, c = cell.runs[0], cell.comparison
        floor = s.floors[(first.regime, first.start)][0]
        if c is None:
            iqm, low, high = st.iqm_interval(_finals(cell.runs, s.worst))
            paired = ("",) * 8 if first.arm == "baseline" else (0,) + ("",) * 7
            word = "" if first.arm == "baseline" else "no baseline"
        else:
            iqm, (low, high) = c.iqm, c.iqm_ci
            paired = (c.n, signed_text(c.mean), interval_text(c.ci, c.n), interval_text(c.rerun, c.n), f"{c.better}/{c.worse}",
                      _p(c.p_value), _p(c.p_holm), "" if c.poi is None else f"{c.poi:.2f}")  # fmt: skip
            word = st.verdict(c.mean, floor, c.ci) if first.arm == "guided" else ""
            word += f" ({cell.unpaired} seed(s) without baseline)" if cell.unpaired else ""
        iqm_text = num(iqm) + ("" if low is None else f" [{num(low)}, {num(high)}]")
        body.append((first.regime, start_label(first.start), s.labels[key], len(cell.runs), *paired, iqm_text, word,
                     *_cost(cell.runs)))  # fmt: skip
    rerun = "Re-run lands in (95 %)" + ("" if s.rerun_seeds is None else f", {s.rerun_seeds} seeds")
    columns = ["Regime", "Start", "Model", "Seeds", "Pairs", "Δ final (+ better)", "95 % CI", rerun, "Better/worse",
               "Wilcoxon p", "Holm p", "P(improve)", "IQM final [95 % CI]", "Verdict", "Calls/run", "Tokens/run",
               "Wait s/run", "$/run"]  # fmt: skip
    notes = _notes(runs, s.stats, s.floors, s.worst, mode, s.rerun_seeds)
    text = "Paired against the baseline of the same seed:\n\n" + markdown_table(columns, body) + "\n\n" + notes
    rescue = rescue_markdown(runs, s.floors, s.worst, mode, s.cells, s.labels)
    return text + ("\n\n" + rescue if rescue else "") + "\n"


def _rerun_seeds_text(rerun_seeds: int | None) -> str:
    return "as many fresh seeds as the cell has" if rerun_seeds is None else f"{rerun_seeds} fresh seeds"


def _notes(runs, stats, floors, worst, mode, rerun_seeds) -> str:
    """What a reader needs to read the table: the difference's sign, the tests, the noise floors, what is missing."""
    lines = [
        f"Δ: the final objective minus the baseline's of the same seed, signed so that + is better ({mode}imised "
        "objective); 95 % CI: bootstrap over seeds (BCa, paired), for the mean of these seeds; Re-run lands in: "
        f"where the mean Δ of a re-run on {_rerun_seeds_text(rerun_seeds)} is expected to land, 95 % (a prediction interval, mean ± t·s·√(1/n + 1/m); "
        "check a replication against it, not against the CI; `run.py report --rerun-seeds M` for M seeds); Wilcoxon: two-sided signed-rank p; Holm: corrected "
        "across the guided cells of this table; P(improve): probability that a run of the cell beats a run of the "
        "baseline (rliable); IQM: interquartile mean of the final objective with rliable's stratified bootstrap "
        "95 % CI. Cost columns: mean per run (tokens: prompt + completion; wait: seconds the trainer waited for "
        "decisions).",
    ]
    small = sorted({c.comparison.n for c in stats.values() if c.comparison and c.comparison.n < st.WILCOXON_MIN_PAIRS})
    if small:
        lines.append("Fewer than 6 pairs: the smallest two-sided Wilcoxon p attainable is "
                     + ", ".join(f"{st.smallest_wilcoxon_p(n):.3g} with {n}" for n in small if n > 1)
                     + " (2/2ⁿ), so p < 0.05 is out of reach.")  # fmt: skip
    for (regime, start), (floor, n) in floors.items():
        where = f"regime {regime}, start {start_label(start)}"
        if floor is None:
            lines.append(f"A/A noise floor ({where}): none measured (add `aa` to `--controller`); verdicts by the CI.")
        else:
            lines.append(f"A/A noise floor ({where}): ±{num(floor)} = 1.96 · RMS of {n} A/A difference(s) (an A/A "
                         "run: the baseline with only the training-order seed changed); verdict: the mean Δ beyond "
                         "it (better / worse beyond noise) or within it.")  # fmt: skip
    diverged = sum(1 for r in runs if r.final_objective is not None and r.final_objective != r.final_objective)
    if diverged:
        lines.append(f"{diverged} diverged run(s) (NaN objective) count as the worst final value of the task, "
                     f"{num(worst)}.")  # fmt: skip
    if all(r.llm_calls is None for r in runs):
        lines.append("No cost data: this database records no per-run cost (no `run_costs` view).")
    return "\n".join(f"* {line}" for line in lines)


def rescue_markdown(runs, floors, worst, mode, cells, labels) -> str:
    """The rescue table of bad-start cells (a start other than the defaults): per cell the share of runs whose
    final objective is not worse than the good-start baseline of the same seed by more than the noise floor of the
    good start (:func:`st.rescued`); '' where no cell starts badly."""
    good = {(r.regime, r.seed): r for r in runs if r.arm == "baseline" and r.start == GOOD_START}
    body, missing = [], 0
    for key, cell in cells.items():
        first = cell[0]
        if first.start == GOOD_START:
            continue
        floor = floors.get((first.regime, GOOD_START), (None, 0))[0]
        judged = [(r, good[(r.regime, r.seed)]) for r in cell if (r.regime, r.seed) in good]
        missing += len(cell) - len(judged)
        mine = st.worst_filled([r.final_objective for r, _ in judged], worst)
        theirs = st.worst_filled([g.final_objective for _, g in judged], worst)
        rescued = sum(st.rescued(st.signed(a, b, mode), floor) for a, b in zip(mine, theirs))
        rate = f"{rescued / len(judged):.0%}" if judged else ""
        body.append((first.regime, start_label(first.start), labels[key], len(judged), rescued, rate))
    if not body:
        return ""
    text = "Rescue from a bad start:\n\n" + markdown_table(["Regime", "Start", "Model", "Runs", "Rescued", "Rate"], body)
    text += ("\n\n* Rescued: the final objective is not worse than the good-start (default) baseline of the same seed "
             "by more than the good start's A/A noise floor (0 where none was measured).")  # fmt: skip
    if missing:
        text += f"\n* {missing} bad-start run(s) have no good-start baseline of their seed: not judged."
    return text

