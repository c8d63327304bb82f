"""reflector: judge the previous decision from the change in validation accuracy it was followed by.

The decision made after epoch e-1 governed epoch e, so at epoch e the judgement compares val_acc(e)
with val_acc(e-1). The verdict goes back to the trainer, into ``reflections``, and into the next
prompt.
"""

from __future__ import annotations

import math
import time
from typing import Callable

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
    if c.modulated_layers():
        changes.append(f"modulating {', '.join(c.modulated_layers())}")
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
        epoch=m.epoch,
        about_epoch=m.history[-2].epoch,
        prev_val_acc=before,
        val_acc=after,
        verdict=verdict,
        text=text,
        rule_verdict=verdict,
    )


def reflector(state: AgentState) -> dict:
    """The rule-based reflector (no model)."""
    return {"reflection": judge_previous_decision(state["metrics"])}


def make_reflector(judge) -> Callable[[AgentState], dict]:
    """A reflector whose verdict comes from ``judge`` (an ``agents.llm.LLMJudge``), with the rule's
    judgement as the fallback when the model fails — whatever the failure, even an exception: the
    verdict must never cost the validated command. Both verdicts are kept."""

    def model_reflector(state: AgentState) -> dict:
        m = state["metrics"]
        rule = judge_previous_decision(m)
        if rule is None:
            return {"reflection": None}
        started = time.perf_counter()
        try:
            judgement = judge.judge(m, rule, describe_change(m))
            judged, failure, details = judgement.reflection, judgement.failure, judgement.details
        except Exception as exc:  # the model-call boundary of the judge: recorded, then the rule judges
            judged, failure, details = None, f"judge failed: {type(exc).__name__}: {exc}", {}
        latency_ms = round((time.perf_counter() - started) * 1000.0, 1)
        if judged is None:
            note = {"node": "reflector", "action": "rule_fallback", "reason": (failure or "")[:500]}
            return {"reflection": rule, "notes": [{**note, "latency_ms": latency_ms, **details}]}
        note = {"node": "reflector", "action": "model_verdict", "latency_ms": latency_ms, **details}
        return {"reflection": judged, "notes": [note]}

    return model_reflector
