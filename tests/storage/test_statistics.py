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
