"""storage.statistics against numbers worked out by hand and against scipy called directly."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from storage import statistics as st

# Five seeds' paired differences (guided minus baseline, a maximised objective).
DIFFS = [0.012, 0.004, -0.002, 0.009, 0.015]


def test_the_sign_makes_positive_better_for_either_direction():
    assert st.signed(0.95, 0.94, "max") == pytest.approx(0.01)
    assert st.signed(55.0, 60.0, "min") == pytest.approx(5.0)  # a lower RMSE is better
    assert st.signed(60.0, 55.0, "min") == pytest.approx(-5.0)


def test_the_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    low, high = st.bootstrap_ci(DIFFS)
    assert np.mean(DIFFS) == pytest.approx(0.0076) and low < 0.0076 < high
    assert -0.002 <= low and high <= 0.015  # inside the sample's range
    assert st.bootstrap_ci(DIFFS) == (low, high)  # seeded
    assert st.bootstrap_ci([0.01]) is None  # one seed: no interval
    assert st.bootstrap_ci([0.01, 0.01, 0.01]) == (0.01, 0.01)


def test_the_rerun_interval_is_the_prediction_interval_of_a_new_mean_worked_by_hand():
    # [1, 2, 3, 4, 5]: mean 3, s = sqrt(2.5); t(0.975; 4) = 2.7764 (tables); half-width t * s * sqrt(1/5 + 1/m)
    low, high = st.rerun_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (low, high) == (pytest.approx(3 - 2.7764 * math.sqrt(2.5 * 0.4), abs=1e-3),
                           pytest.approx(3 + 2.7764 * math.sqrt(2.5 * 0.4), abs=1e-3))  # fmt: skip
    ten = st.rerun_interval([1.0, 2.0, 3.0, 4.0, 5.0], rerun_seeds=10)
    assert ten[1] - 3 == pytest.approx(2.7764 * math.sqrt(2.5 * (0.2 + 0.1)), abs=1e-3)  # more seeds: narrower
    assert st.rerun_interval([0.5]) is None and st.rerun_interval([0.0, 0.0, 0.0]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="at least 1 seed"):
        st.rerun_interval(DIFFS, rerun_seeds=0)
    c = st.compare([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], "max", rerun_seeds=4)
    assert c.rerun == st.rerun_interval([1.0, 2.0, 3.0], 4) and c.rerun_seeds == 4


def test_a_fresh_five_seed_mean_lands_in_the_rerun_interval_95_percent_of_the_time_and_in_a_ci_less_often():
    rng = np.random.default_rng(7)
    published, fresh = rng.normal(0.3, 1.0, (4000, 5)), rng.normal(0.3, 1.0, (4000, 5)).mean(axis=1)
    inside = [low <= m <= high for row, m in zip(published, fresh) for low, high in [st.rerun_interval(row)]]
    assert 0.935 < np.mean(inside) < 0.965
    t = scipy_stats.t.ppf(0.975, 4)
    half = t * published.std(axis=1, ddof=1) / math.sqrt(5)  # the exact t confidence interval of the mean
    in_ci = np.abs(fresh - published.mean(axis=1)) <= half
    exact = 2 * scipy_stats.t.cdf(t / math.sqrt(2), 4) - 1  # 0.879 at n = 5 (Cumming & Maillardet 2006: 83 % as n grows)
    assert abs(in_ci.mean() - exact) < 0.015 and in_ci.mean() < 0.92  # +-0.015: ~3 standard errors of 4000 draws


def test_wilcoxon_is_scipys_and_its_floor_with_few_pairs():
    assert st.wilcoxon_p(DIFFS) == scipy_stats.wilcoxon(DIFFS).pvalue
    # ranks of |d|: 0.002→1 (negative), 0.004→2, 0.009→3, 0.012→4, 0.015→5; W- = 1: exact p = 2·P(W ≤ 1) = 2·2/32
    assert st.wilcoxon_p(DIFFS) == pytest.approx(0.125)
    assert st.wilcoxon_p([1, 2, 3, 4, 5]) == pytest.approx(st.smallest_wilcoxon_p(5)) == pytest.approx(0.0625)
    assert st.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
    assert st.wilcoxon_p([0.3]) is None


def test_holm_on_a_known_vector():
    # sorted 0.01, 0.03, 0.04 × (3, 2, 1) = 0.03, 0.06, 0.04 → monotone: 0.03, 0.06, 0.06
    assert st.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert st.holm([0.2, None, 0.01]) == [pytest.approx(0.2), None, pytest.approx(0.02)]
    assert st.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_probability_of_improvement_counts_pairs_and_ties_half():
    # arm 3 beats 1 and 2, arm 2 beats 1 and ties 2: (2 + 1.5 + 0) / 4 pairs ... with 2×2: (2 + 1.5) / 4
    assert st.probability_of_improvement([3.0, 2.0], [1.0, 2.0]) == pytest.approx(3.5 / 4)
    assert st.probability_of_improvement([], [1.0]) is None


def test_the_iqm_is_the_mean_of_the_middle_half_with_an_interval():
    iqm, low, high = st.iqm_interval([0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 100.0])
    assert iqm == pytest.approx(np.mean([2.0, 3.0, 10.0, 11.0]))
    assert low <= iqm <= high
    assert st.iqm_interval([0.5]) == (0.5, None, None)


def test_the_noise_floor_is_196_times_the_rms_of_the_aa_differences():
    assert st.noise_floor([0.003, -0.004]) == pytest.approx(1.96 * math.sqrt((0.003**2 + 0.004**2) / 2))
    assert st.noise_floor([]) is None


def test_verdicts_and_rescue_against_the_floor():
    assert st.verdict(0.02, 0.01, None) == "better"
    assert st.verdict(-0.02, 0.01, None) == "worse beyond noise"
    assert st.verdict(-0.005, 0.01, (-0.02, 0.01)) == "within noise"
    assert st.verdict(0.02, None, (0.01, 0.03)) == "better (CI)"
    assert st.verdict(0.02, None, None) == ""
    assert st.rescued(-0.005, 0.01) and not st.rescued(-0.02, 0.01) and not st.rescued(-0.001, None)


def test_a_diverged_run_counts_as_the_worst_value():
    assert st.worst_value([60.0, math.nan, 55.0], "min") == 60.0
    assert st.worst_value([0.9, math.nan, 0.8], "max") == 0.8
    assert st.worst_filled([0.9, math.nan], 0.8) == [0.9, 0.8]


def test_compare_pairs_seed_by_seed():
    c = st.compare([56.0, 58.0, 57.0], [60.0, 59.0, 57.0], "min")
    assert (c.n, c.mean, c.better, c.worse) == (3, pytest.approx(5 / 3), 2, 0)  # 4, 1, 0
    assert c.poi == pytest.approx(st.probability_of_improvement([-56.0, -58.0, -57.0], [-60.0, -59.0, -57.0]))
    with pytest.raises(ValueError, match="equal length"):
        st.compare([1.0], [1.0, 2.0], "max")


def test_misses_by_chance_is_the_binomial_upper_tail_worked_by_hand():
    # 3 or more of 22 outside at 5 % each: 1 - [0.95^22 + 22 * 0.05 * 0.95^21 + 231 * 0.05^2 * 0.95^20]
    by_hand = 1 - (0.95**22 + 22 * 0.05 * 0.95**21 + 231 * 0.05**2 * 0.95**20)
    assert st.misses_by_chance(3, 22) == pytest.approx(by_hand, rel=1e-9)
    assert st.misses_by_chance(0, 22) == 1.0
    assert st.misses_by_chance(1, 1) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="outside <= judged"):
        st.misses_by_chance(3, 2)
