"""The objective's epoch noise (agents.trends.epoch_noise): a robust sigma around the trend."""

from __future__ import annotations

import math

import pytest

from agents.trends import epoch_noise


def test_a_steady_climb_has_no_noise_and_an_alternating_series_has_its_swing():
    assert epoch_noise([0.70, 0.72, 0.74, 0.76, 0.78, 0.80]) == pytest.approx(0.0, abs=1e-12)
    # changes +-0.04 around a flat level (an even count): their standard deviation 0.04, a value's 0.04 / sqrt(2)
    assert epoch_noise([0.70, 0.74, 0.70, 0.74, 0.70]) == pytest.approx(0.04 / math.sqrt(2))


def test_too_few_or_broken_values_give_no_noise_and_only_the_last_window_counts():
    assert epoch_noise([0.5, 0.6, 0.7]) == 0.0
    assert epoch_noise([math.nan, 0.70, 0.74, 0.70, 0.74, 0.70]) == pytest.approx(0.04 / math.sqrt(2))
    assert epoch_noise([0.1, 0.9, 0.1, 0.9] + [0.5, 0.51, 0.52, 0.53, 0.54, 0.55, 0.56, 0.57]) == pytest.approx(0.0, abs=1e-9)
