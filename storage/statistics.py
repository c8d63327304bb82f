"""The report's statistics: paired differences to the baseline of the same seed, their bootstrap interval, the
Wilcoxon signed-rank test with Holm's correction, rliable's probability of improvement and interquartile mean,
the A/A noise floor and the rescue rule.

Every difference is *signed so that positive is better* (:func:`signed`): for a task whose objective is
minimised (diabetes ``val_rmse``) the baseline minus the arm, else the arm minus the baseline. A diverged run (a
NaN objective) counts as the worst value: :func:`worst_filled` replaces it before anything is computed.

Every resampling is seeded (:data:`BOOTSTRAP_SEED`), so the same results give the same Markdown byte for byte,
whether read from the database or from the exported CSV.

Sources: Efron & Tibshirani (1993) for the bootstrap (scipy.stats.bootstrap, BCa); Wilcoxon (1945) via
scipy.stats.wilcoxon; Holm (1979) via statsmodels; Agarwal et al., "Deep RL at the Edge of the Statistical
Precipice" (NeurIPS 2021) for the IQM, the stratified bootstrap and the probability of improvement (rliable);
Hahn, Meeker & Escobar, "Statistical Intervals" (2nd ed., Wiley 2017), ch. 4, for the prediction interval of a
future sample mean (:func:`rerun_interval`), and Cumming & Maillardet, "Confidence intervals and replication: where
will the next mean fall?" (Psychological Methods 11(3), 2006) for why a confidence interval is not that interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 9999  # scipy's default; the percentile ends are stable to ~3 digits at this count
IQM_RESAMPLES = 2000  # rliable's examples use 2000 for the stratified bootstrap
CONFIDENCE = 0.95
NOISE_Z = 1.96  # the two-sided 95 % normal quantile of the A/A band
WILCOXON_MIN_PAIRS = 6  # below this the exact two-sided p cannot reach 0.05 (2 / 2**5 = 0.0625)


def signed(arm: float, baseline: float, mode: str) -> float:
    """``arm`` minus ``baseline`` with the sign turned so that a positive number is better (``mode`` 'max' or
    'min', the objective's direction)."""
    return baseline - arm if mode == "min" else arm - baseline


def worst_filled(values: Sequence[float], worst: float) -> list[float]:
    """``values`` with every NaN (a diverged run) replaced by ``worst``, the worst objective seen in its table."""
    return [worst if math.isnan(v) else v for v in values]


def worst_value(values: Sequence[float], mode: str) -> float:
    """The worst finite objective in ``values`` by ``mode`` (NaN when none is finite): what a diverged run
    counts as."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan
    return max(finite) if mode == "min" else min(finite)


def bootstrap_ci(differences: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The bootstrap confidence interval of the mean of paired ``differences`` (one per seed: resampling them
    resamples seeds, the pairing kept), BCa by scipy.stats.bootstrap, seeded. None for fewer than 2 pairs (no
    interval from one seed); where BCa is undefined (all differences equal, or two of them) the percentile interval.
    """
    from scipy import stats

    data = np.asarray(differences, dtype=float)
    if len(data) < 2:
        return None
    if np.ptp(data) == 0:
        return float(data[0]), float(data[0])
    for method in ("BCa", "percentile"):
        result = stats.bootstrap(
            (data,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES, method=method,
            rng=np.random.default_rng(BOOTSTRAP_SEED),
        )  # fmt: skip
        low, high = result.confidence_interval
        if math.isfinite(low) and math.isfinite(high):
            return float(low), float(high)
    return None


def rerun_interval(differences: Sequence[float], rerun_seeds: int | None = None,
                   confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Where the mean paired difference of a re-run on ``rerun_seeds`` fresh seeds (default: as many as
    ``differences`` has) is expected to land, with probability ``confidence``: the prediction interval for the mean
    of m future observations from a normal sample of n, ``mean ± t(1 - (1 - confidence)/2; n - 1) · s · sqrt(1/n +
    1/m)`` (Hahn, Meeker & Escobar 2017, ch. 4; t from scipy.stats.t). The exact 95 % t confidence interval of
    the mean holds a fresh n-seed mean only ``2 F(t / sqrt 2; n - 1) - 1`` of the time, 88 % at n = 5 and 83 % as
    n grows (Cumming & Maillardet 2006), and a 5-seed BCa interval, narrower, less often still: this is the
    interval a replication is checked against. None for fewer than 2 differences;
    raises ValueError for ``rerun_seeds`` < 1."""
    from scipy import stats

    if rerun_seeds is not None and rerun_seeds < 1:
        raise ValueError(f"a re-run needs at least 1 seed, got {rerun_seeds}")
    data = np.asarray(differences, dtype=float)
    n = len(data)
    if n < 2:
        return None
    m = rerun_seeds or n
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(np.std(data, ddof=1)) * math.sqrt(1 / n + 1 / m)
    mean = float(np.mean(data))
    return mean - half, mean + half


def misses_by_chance(outside: int, judged: int, confidence: float = CONFIDENCE) -> float:
    """The probability that ``outside`` or more of ``judged`` re-run cells land outside their ``confidence``
    re-run intervals (:func:`rerun_interval`) by chance alone: the upper tail of Binomial(judged, 1 - confidence)
    (scipy.stats.binom). Assumes the cells independent; cells of one start share their baseline seeds, which makes
    misses come together and this tail too small, so a small value is a prompt to look, not a verdict. 1.0 for
    ``outside`` = 0; raises ValueError for counts outside 0 <= outside <= judged."""
    from scipy import stats

    if not 0 <= outside <= judged:
        raise ValueError(f"need 0 <= outside <= judged, got {outside} of {judged}")
    return float(stats.binom.sf(outside - 1, judged, 1 - confidence))


def wilcoxon_p(differences: Sequence[float]) -> float | None:
    """The two-sided Wilcoxon signed-rank p-value of paired ``differences`` (scipy.stats.wilcoxon; exact for
    small samples, zero differences dropped as in Wilcoxon's original test). None for fewer than 2 pairs; 1.0
    when every difference is zero (no evidence of any difference). With n non-zero pairs the smallest p it can
    give is ``2 / 2**n`` (:func:`smallest_wilcoxon_p`)."""
    from scipy import stats

    data = np.asarray(differences, dtype=float)
    if len(data) < 2:
        return None
    if not np.any(data):
        return 1.0
    return float(stats.wilcoxon(data).pvalue)


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p-value the exact signed-rank test reaches with ``n`` pairs: every sign the same."""
    return 2.0 / 2**n


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down correction of ``p_values`` across the cells of one table (None stays None: a cell with
    no test). statsmodels implements it and is already installed with rliable (through ``arch``), so it costs
    no extra dependency."""
    from statsmodels.stats.multitest import multipletests

    tested = [i for i, p in enumerate(p_values) if p is not None]
    corrected: list[float | None] = [None] * len(p_values)
    if tested:
        adjusted = multipletests([p_values[i] for i in tested], method="holm")[1]
        for i, p in zip(tested, adjusted):
            corrected[i] = float(p)
    return corrected


def _rliable_metrics():
    from rliable import metrics  # numpy and scipy only (rliable.library would load arch, pandas, statsmodels)

    return metrics


def probability_of_improvement(arm: Sequence[float], baseline: Sequence[float]) -> float | None:
    """P(X > Y) of a run of the arm against a run of the baseline, ties counting half (rliable's
    ``probability_of_improvement``, a Mann–Whitney U statistic over all pairs of runs); the values must be signed
    so that higher is better (negate a minimised objective). None when either side is empty."""
    if not len(arm) or not len(baseline):
        return None
    metrics = _rliable_metrics()
    x = np.asarray(arm, dtype=float).reshape(-1, 1)  # rliable: runs × tasks
    y = np.asarray(baseline, dtype=float).reshape(-1, 1)
    return float(metrics.probability_of_improvement(x, y))


def iqm_interval(scores: Sequence[float]) -> tuple[float, float | None, float | None]:
    """The interquartile mean of ``scores`` (one per seed; rliable's ``aggregate_iqm``, the 25 % trimmed mean)
    with the 95 % interval of rliable's stratified percentile bootstrap, seeded; (iqm, None, None) for fewer than
    2 scores. A cell is one task, so the strata are that task alone and the stratified bootstrap is the plain
    bootstrap over runs: it is computed vectorised by scipy.stats.bootstrap over rliable's own statistic, since
    rliable's loop (``library.get_interval_estimates``) takes about 1.6 s per cell at 2000 resamples."""
    from scipy import stats

    metrics = _rliable_metrics()
    data = np.asarray(scores, dtype=float)
    iqm = float(metrics.aggregate_iqm(data.reshape(-1, 1)))
    if len(data) < 2:
        return iqm, None, None
    if np.ptp(data) == 0:
        return iqm, iqm, iqm
    result = stats.bootstrap(
        (data,), lambda x, axis: stats.trim_mean(x, proportiontocut=0.25, axis=axis), vectorized=True,
        n_resamples=IQM_RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )  # fmt: skip
    low, high = result.confidence_interval
    return iqm, float(low), float(high)


def noise_floor(aa_differences: Sequence[float]) -> float | None:
    """The A/A noise floor: ``1.96 · sqrt(mean(d²))`` over the A/A pairs' signed differences ``d`` (the baseline
    again with only the training-order seed changed, minus its baseline). A/A differences have mean zero by
    construction, so the root mean square estimates the standard deviation of one run's difference due to that
    seed alone, and the floor is the half-width of a 95 % band around zero. None without any A/A pair."""
    if not len(aa_differences):
        return None
    d = np.asarray(aa_differences, dtype=float)
    return float(NOISE_Z * math.sqrt(float(np.mean(d**2))))


def verdict(mean: float, floor: float | None, ci: tuple[float, float] | None) -> str:
    """A guided cell's verdict from its mean paired difference (positive is better): beyond the A/A ``floor``
    either way, or within it; without a floor, by its confidence interval alone (marked "(CI)"); '' when neither
    exists."""
    if floor is not None:
        if mean > floor:
            return "better"
        return "worse beyond noise" if mean < -floor else "within noise"
    if ci is None:
        return ""
    low, high = ci
    return "better (CI)" if low > 0 else "worse (CI)" if high < 0 else "inconclusive (CI)"


def rescued(difference_to_good_start: float, floor: float | None) -> bool:
    """Whether a bad-start run counts as rescued: its final objective, minus the good-start baseline's of the
    same seed (signed, positive is better), is not worse by more than the noise floor (0 without one)."""
    return difference_to_good_start >= -(floor or 0.0)


@dataclass(frozen=True)
class PairedComparison:
    """One cell against its baseline over ``n`` seeds: the mean signed difference (positive is better) and the
    differences themselves, its
    bootstrap interval, where a re-run's mean is expected to land (``rerun``, for ``rerun_seeds`` fresh seeds:
    :func:`rerun_interval`), Wilcoxon p (``p_holm`` is filled across a table by :func:`holm`), how many seeds were
    better and worse, the probability of improvement and the arm's interquartile mean (signed objective units
    are not used here: ``iqm`` is in the objective's own units) with its interval."""

    n: int
    mean: float
    differences: tuple[float, ...]  # seed by seed, signed (+ is better)
    ci: tuple[float, float] | None
    rerun: tuple[float, float] | None
    rerun_seeds: int
    p_value: float | None
    better: int
    worse: int
    poi: float | None
    iqm: float
    iqm_ci: tuple[float | None, float | None]
    p_holm: float | None = None


def compare(arm: Sequence[float], baseline: Sequence[float], mode: str,
            rerun_seeds: int | None = None) -> PairedComparison:
    """``arm`` against ``baseline``, both final objectives listed seed by seed (same length, NaN already
    filled by :func:`worst_filled`); ``rerun_seeds``: the seeds of the re-run the re-run interval is for (default:
    as many as here). Raises ValueError for lists of different lengths or empty ones, or ``rerun_seeds`` < 1."""
    if len(arm) != len(baseline) or not len(arm):
        raise ValueError(f"paired samples must be non-empty and of equal length, got {len(arm)=} and {len(baseline)=}")
    differences = [signed(a, b, mode) for a, b in zip(arm, baseline)]
    sign = -1.0 if mode == "min" else 1.0
    iqm, low, high = iqm_interval(arm)
    return PairedComparison(
        n=len(differences), mean=float(np.mean(differences)), differences=tuple(differences),
        ci=bootstrap_ci(differences),
        rerun=rerun_interval(differences, rerun_seeds), rerun_seeds=rerun_seeds or len(differences),
        p_value=wilcoxon_p(differences), better=sum(d > 0 for d in differences), worse=sum(d < 0 for d in differences),
        poi=probability_of_improvement([sign * a for a in arm], [sign * b for b in baseline]), iqm=iqm, iqm_ci=(low, high),
    )  # fmt: skip
