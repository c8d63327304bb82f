"""Reading the measured trends into a :class:`Signal`: collapsed (worse than the best epoch by far), diverging, a widening generalization gap, a plateau,
steady gains, a change still settling, or no clear trend — with the heuristic's rule set
(``agents.controllers.rules``: the same tests, the same thresholds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from agents.controllers.rules import DIVERGING_BANDS, NOISE_SIGMAS, PLATEAU_EPOCHS, collapse, gap_widening, on_plateau
from agents.trends import Trends, epochs_at_current_values, training_trends
from bus.messages import EpochMetrics


SignalKind = Literal["collapsed", "diverging", "plateau", "overfitting", "steady", "unclear", "start", "settling"]


@dataclass(frozen=True)
class Signal:
    """What the measured trends say after this epoch (:func:`read_signal`), with the sentence that says why."""

    kind: SignalKind
    reason: str


def read_signal(m: EpochMetrics, t: Trends | None = None) -> Signal:
    """The unambiguous signals first: a collapse (``agents.controllers.rules.collapse``: far worse than an earlier
    best epoch, which a rollback returns to), a diverging objective (not finite, or worse by :data:`DIVERGING_BANDS`
    noise bands in one epoch); then, unless the knobs changed fewer than :data:`PLATEAU_EPOCHS` epochs ago
    (``settling``: a change is given time to act, as ``ReduceLROnPlateau``'s cooldown), a widening
    generalization gap beyond :data:`~agents.controllers.rules.GAP_NOISE_BANDS` bands, a plateau (no new best for
    :data:`PLATEAU_EPOCHS` epochs since the best and since the last change), steady gains (a new best, beyond
    the noise band, this epoch); else ``unclear`` (``start`` at the first epoch)."""
    spec, t = m.task, t or training_trends(m)
    if (collapsed := collapse(m)) is not None:
        return Signal("collapsed", collapsed)
    value = m.objective_value
    if not math.isfinite(value):
        return Signal("diverging", f"{spec.objective} is {value}: the run is diverging")
    if len(m.history) >= 2:
        before = m.history[-2].metrics.get(spec.objective, math.nan)
        change = spec.improvement(before, value)
        # beyond the run's own epoch noise too: not every chance dip of a noisy objective (100 MNIST images)
        if math.isfinite(before) and change < -max(DIVERGING_BANDS * spec.noise_band, NOISE_SIGMAS * t.epoch_noise):
            return Signal("diverging", f"{spec.objective} fell from {before:.4g} to {value:.4g} in one epoch")
    if len(m.history) < 2:
        return Signal("start", "only one epoch so far")
    settled = epochs_at_current_values(m)
    if settled < PLATEAU_EPOCHS:
        return Signal(
            "settling", f"the hyperparameters changed {settled} epoch(s) ago: their effect is not measured yet"
        )
    if gap_widening(spec, t):
        return Signal("overfitting", f"the train/validation gap widened from {t.previous_gap:.3g} to {t.gap:.3g}")
    if on_plateau(t):  # and settled >= PLATEAU_EPOCHS, checked above
        return Signal(
            "plateau",
            f"no new best {spec.objective} for {t.epochs_since_best} epochs (best {t.best:.4g} at epoch {t.best_epoch})",
        )
    before = m.history[-2].metrics.get(spec.objective, math.nan)
    if t.epochs_since_best == 0 and spec.improvement(before, value) > spec.noise_band:
        return Signal("steady", f"{spec.objective} improved from {before:.4g} to {value:.4g}, a new best")
    return Signal(
        "unclear", f"{spec.objective} {value:.4g}, best {t.best:.4g} at epoch {t.best_epoch}: no clear trend yet"
    )
