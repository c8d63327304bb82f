"""Derived training trends and the task's view of a message, shared by the prompter, the policies, the
reflector and the critic.

Everything here reads the task from the message (``EpochMetrics.task``): the objective with its
direction, the knobs by name. Nothing is specific to one task.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from bus.messages import EpochMetrics, Hyperparameter, TaskSpec

# A held-out metric ``val_X`` has the training counterpart ``train_X``: their difference is the
# generalization gap. Evaluation metrics of another kind (``eval_``, ``test_``) only pair up for display.
HELD_OUT_PREFIX = "val_"
DISPLAY_PREFIXES = ("val_", "eval_", "test_")


@dataclass(frozen=True)
class Trends:
    """The trends a rule reads after one epoch (:func:`training_trends`); values are in the objective's
    units, epochs are 1-based epoch numbers."""

    objective: str
    best: float  # the best objective value so far, by the task's mode
    best_epoch: int
    epochs_since_best: int
    train_metric: str | None  # the objective's training counterpart (val_acc -> train_acc), if reported
    gap: float | None  # how much better the training metric is than the objective now (None: no counterpart)
    previous_gap: float | None  # the same one epoch earlier (equal to gap at epoch 1)
    # Epochs, ending with this one, trained with this epoch's knob values and alpha (1: they changed just before
    # it). A change resets a plateau's count, as a reduction resets ReduceLROnPlateau's bad epochs.
    epochs_since_change: int = 1
    # The objective's own epoch-to-epoch noise (:func:`epoch_noise`) over the epochs before this one: with 100 MNIST
    # images validation accuracy moves a point or two an epoch by chance, ten times the task's noise band.
    epoch_noise: float = 0.0


def train_counterpart(
    name: str, metrics: dict[str, float], prefixes: tuple[str, ...] = (HELD_OUT_PREFIX,)
) -> str | None:
    """``train_X`` for a metric ``val_X`` (or another of ``prefixes``) when ``metrics`` has it, else None."""
    for prefix in prefixes:
        if name.startswith(prefix) and f"train_{name[len(prefix) :]}" in metrics:
            return f"train_{name[len(prefix) :]}"
    return None


def generalization_gap(spec: TaskSpec, metrics: dict[str, float], train_metric: str) -> float:
    """How much better ``train_metric`` is than the objective, signed by the task's mode (positive: train is
    better), e.g. ``train_acc - val_acc`` for ``max``, ``val_rmse - train_rmse`` for ``min``."""
    return spec.improvement(metrics.get(spec.objective, math.nan), metrics.get(train_metric, math.nan))


def training_trends(m: EpochMetrics) -> Trends:
    """Best objective so far (the earliest epoch on a tie), epochs since, and the generalization gap now
    and one epoch earlier. ``m.history`` ends with this epoch."""
    spec, history = m.task, m.history or []
    best = m.best  # bus.messages.best_epoch: the epoch the trainer keeps for a rollback
    best_value, best_epoch = (best.metrics[spec.objective], best.epoch) if best else (m.objective_value, m.epoch)
    train_metric = train_counterpart(spec.objective, m.metrics)
    gap = previous_gap = None
    if train_metric is not None:
        gap = generalization_gap(spec, m.metrics, train_metric)
        previous_gap = generalization_gap(spec, history[-2].metrics, train_metric) if len(history) >= 2 else gap
    values = [h.metrics.get(spec.objective, math.nan) for h in history]
    return Trends(spec.objective, best_value, best_epoch, m.epoch - best_epoch, train_metric, gap, previous_gap,
                  epochs_at_current_values(m), epoch_noise(values[:-1]))  # fmt: skip


NOISE_WINDOW = 8  # the last values whose consecutive changes estimate an objective's epoch noise


def epoch_noise(values: list[float]) -> float:
    """The standard deviation of one epoch's value around the objective's trend, estimated from the last
    :data:`NOISE_WINDOW` finite values: the standard deviation of their consecutive changes (a steady climb changes
    by the same amount each epoch: no noise) divided by √2, a change being the difference of two noisy values.
    0 with fewer than three changes."""
    recent = [v for v in values if math.isfinite(v)][-NOISE_WINDOW:]
    changes = [b - a for a, b in zip(recent, recent[1:])]
    return statistics.pstdev(changes) / math.sqrt(2) if len(changes) >= 3 else 0.0


def epochs_at_current_values(m: EpochMetrics) -> int:
    """How many epochs, ending with this one, trained with the knob values and alpha this epoch used (1 with no
    history)."""
    count = 0
    for h in reversed(m.history or []):
        if h.hyperparameters != m.history[-1].hyperparameters or h.alpha != m.history[-1].alpha:
            break
        count += 1
    return max(count, 1)


def current_values(m: EpochMetrics) -> dict[str, float]:
    """The value of each of the task's knobs this epoch used, in the task's order (a knob the trainer did
    not report counts as its default)."""
    return {k.name: m.hyperparameters.get(k.name, k.default) for k in m.task.hyperparameters}


def objective_decimals(spec: TaskSpec) -> int:
    """Decimals that resolve a tenth of the noise band: 4 for MNIST's 0.002, 2 for an RMSE band of 0.5,
    0 for a return band of 10; 4 when the task declares no band."""
    if spec.noise_band <= 0:
        return 4
    return max(0, 1 - math.floor(math.log10(spec.noise_band)))


def step_digits(knob: Hyperparameter) -> int:
    """Decimals a value of a linear knob is rounded to after a step: at least 4, and one more than the
    step's first significant digit (dropout's 0.1 -> 4, a weight decay step of 1e-5 -> 8)."""
    return max(4, 3 - math.floor(math.log10(knob.step)))


def direction_words(spec: TaskSpec) -> str:
    """The task's objective direction for a prompt: ``"higher is better"`` for mode ``max``, else
    ``"lower is better"``."""
    return "higher is better" if spec.mode == "max" else "lower is better"


def weight_layers(m: EpochMetrics) -> list[str]:
    """The names of the weight tensors the agent may modulate, first layer to last."""
    return [name for name in m.param_shapes if name.endswith("weight")]
