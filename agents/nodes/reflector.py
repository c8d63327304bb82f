"""reflector: judge the previous decision from the change in validation accuracy it was followed by.

The decision made after epoch e-1 governed epoch e, so at epoch e the judgement compares val_acc(e)
with val_acc(e-1). The verdict goes back to the trainer, into ``reflections``, and into the next
prompt.
"""

from __future__ import annotations

import math

from agents.state import AgentState
from bus.messages import EpochMetrics, Reflection

NEUTRAL_BAND = 0.002  # |change in val acc| below this (0.2 points) is noise, not an effect


def describe_change(m: EpochMetrics) -> str:
    """What the previous command changed relative to the epoch before it, in words."""
    c, before = m.previous_command, m.history[-2]
    changes = [
        f"{label} {old:{fmt}} -> {new:{fmt}}"
        for label, old, new, fmt in (
            ("lr", before.lr, c.learning_rate, ".2e"),
            ("dropout", before.dropout, c.dropout, ".2f"),
            ("alpha", before.alpha, c.alpha, ".2f"),
        )
        if not math.isclose(old, new, rel_tol=1e-9, abs_tol=1e-12)
    ]
    if c.weight_modulation:
        changes.append(f"modulating {', '.join(c.weight_modulation)}")
    return "changing " + ", ".join(changes) if changes else "keeping the hyperparameters"


def judge_previous_decision(m: EpochMetrics) -> Reflection | None:
    if m.previous_command is None or len(m.history) < 2:
        return None
    before, after = m.history[-2].val_acc, m.val_acc
    change = after - before
    verdict = "beneficial" if change > NEUTRAL_BAND else "harmful" if change < -NEUTRAL_BAND else "neutral"
    text = (
        f"Validation accuracy went from {before:.4f} to {after:.4f} ({change * 100:+.2f} points) after "
        f"{describe_change(m)}: the decision was {verdict}."
    )
    return Reflection(
        epoch=m.epoch, about_epoch=m.history[-2].epoch, prev_val_acc=before, val_acc=after, verdict=verdict, text=text
    )


def reflector(state: AgentState) -> dict:
    return {"reflection": judge_previous_decision(state["metrics"])}
