"""``random``: the chance control. Does a controller beat a dice roll over the same actions?

Each decision draws every field of a command uniformly over the bounded action space a model is given after the
same epoch (``agents.proposals.check``), and calls no model:

* a knob: in the free command space uniform over :func:`~agents.proposals.check.allowed_ranges` (its hard bounds
  within the trust region around the current value; log-uniform for a log-scale knob), so no draw is ever clamped;
  in the grid command space uniform over its :func:`~agents.proposals.check.grid_choices`;
* alpha: uniform in ``bus.messages.ALPHA_RANGE`` (the grid: over its alpha choices);
* weights: with probability :data:`WEIGHT_OP_PROBABILITY` one operation on one layer, both uniform over the task's
  layers and :data:`~agents.proposals.proposal.OPERATIONS`, its value uniform within the operation's cap
  (``OP_RANGES``; the grid: ``OP_CHOICES``); the checks derive its noise seed from run, epoch and layer.

The draws are seeded by the run id and the epoch (:func:`decision_rng`), both in every ``EpochMetrics``: a resumed
run, a restarted agent and a repair round see the same draws. The proposal then passes the checks like every
other controller's.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from agents.proposals.check import OP_CHOICES, OP_RANGES, allowed_ranges, grid_choices
from agents.proposals.parse import ALPHA, OP_VALUE_KEYS
from agents.proposals.proposal import OPERATIONS, Proposal, WeightChange
from agents.state import AgentState
from bus.messages import ALPHA_RANGE, EpochMetrics, Hyperparameter

WEIGHT_OP_PROBABILITY = 0.5  # a decision with a weight operation, as often as one without


def decision_rng(run_id: str, epoch: int) -> np.random.Generator:
    """The generator of the decision after ``epoch`` of run ``run_id``: the same pair, the same draws (NumPy's
    ``SeedSequence`` over the run id's CRC-32 and the epoch)."""
    return np.random.default_rng(np.random.SeedSequence([zlib.crc32(run_id.encode()), epoch]))


def draw_knob(rng: np.random.Generator, knob: Hyperparameter, low: float, high: float) -> float:
    """A value of ``knob`` uniform in [low, high]; log-uniform for a log-scale knob (``low`` > 0 there)."""
    if knob.scale == "log":
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))


def draw_weight_change(rng: np.random.Generator, m: EpochMetrics, grid: bool) -> WeightChange | None:
    """None, or with probability :data:`WEIGHT_OP_PROBABILITY` one operation on one of the task's layers."""
    if not m.param_shapes or rng.random() >= WEIGHT_OP_PROBABILITY:
        return None
    layer = str(rng.choice(list(m.param_shapes)))
    op = str(rng.choice(OPERATIONS))
    key = OP_VALUE_KEYS[op]
    value = float(rng.choice(OP_CHOICES[key])) if grid else float(rng.uniform(*OP_RANGES[op]))
    return WeightChange(layer, op, value, key=key)


class RandomPolicy:
    """Uniform random commands over the action space of ``command_space`` (``free`` or ``grid``, the agent's);
    see the module docstring."""

    name = "random"

    def __init__(self, command_space: str = "free"):
        if command_space not in ("free", "grid"):
            raise ValueError(f"command_space must be 'free' or 'grid', got {command_space=}")
        self.grid = command_space == "grid"

    def propose(self, state: AgentState) -> Proposal:
        """The decision after ``state["metrics"]``: every knob, alpha and maybe one weight operation, drawn."""
        m = state["metrics"]
        rng = decision_rng(m.run_id, m.epoch)
        if self.grid:
            choices = grid_choices(m)
            values = {k.name: float(rng.choice(choices[k.name])) for k in m.task.hyperparameters}
            alpha = float(rng.choice(choices[ALPHA]))
        else:
            ranges = allowed_ranges(m)
            values = {k.name: draw_knob(rng, k, *ranges[k.name]) for k in m.task.hyperparameters}
            alpha = float(rng.uniform(*ALPHA_RANGE))
        change = draw_weight_change(rng, m, self.grid)
        drawn = ", ".join(f"{name} {value:.3g}" for name, value in values.items())
        weights = f", {change.op} {change.layer} by {change.value:.3g}" if change else ""
        rationale = f"random draw for epoch {m.epoch + 1}: {drawn}, alpha {alpha:.2f}{weights}"
        return Proposal(values, alpha, (change,) if change else (), rationale=rationale)
