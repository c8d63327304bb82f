"""reflector: judge the previous decision from the change in the task's objective it was followed by.

The decision made after epoch e-1 governed epoch e, so at epoch e the judgement compares the objective
at e with the objective at e-1, in the task's direction (``TaskSpec.improvement``: positive is better).
An improvement beyond the task's noise band is ``beneficial``, a loss beyond it ``harmful``, anything
within it ``neutral``; an objective that turned NaN or infinite (a diverged run) is ``harmful``. The
verdict goes back to the trainer, into ``reflections``, and into the next prompt.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from agents.state import AgentState
from agents.trends import objective_decimals
from bus.messages import EpochMetrics, Hyperparameter, Reflection, TaskSpec, Verdict


def knob_format(knob: Hyperparameter) -> str:
    """How a knob's value reads in a sentence: 1.00e-03 for a log-scale knob, 0.25 for a linear one."""
    return ".2e" if knob.scale == "log" else ".3g"


def describe_change(m: EpochMetrics) -> str:
    """What the previous command changed relative to the epoch before it, in words."""
    c, before = m.previous_command, m.history[-2]
    changes = []
    for knob in m.task.hyperparameters:
        old, new = before.hyperparameters.get(knob.name), c.hyperparameters.get(knob.name)
        if old is not None and new is not None and knob.direction(new, old) != 0:
            changes.append(f"{knob.name} {old:{knob_format(knob)}} -> {new:{knob_format(knob)}}")
    if not math.isclose(before.alpha, c.alpha, rel_tol=1e-9, abs_tol=1e-12):
        changes.append(f"alpha {before.alpha:.2f} -> {c.alpha:.2f}")
    if c.modulated_layers():
        changes.append(f"modulating {', '.join(c.modulated_layers())}")
    return "changing " + ", ".join(changes) if changes else "keeping the hyperparameters"


def rule_verdict(spec: TaskSpec, before: float, after: float) -> Verdict:
    """The rule's verdict on the objective moving from ``before`` to ``after`` (see the module docstring)."""
    if math.isfinite(before) and not math.isfinite(after):
        return "harmful"
    change = spec.improvement(before, after)
    return "beneficial" if change > spec.noise_band else "harmful" if change < -spec.noise_band else "neutral"


def describe_objective_change(spec: TaskSpec, before: float, after: float) -> str:
    """E.g. ``val_rmse went from 55.12 to 54.20 (-0.92, better)``; a change within the noise band says so."""
    d = objective_decimals(spec)
    word = {"beneficial": "better", "harmful": "worse", "neutral": "within noise"}[rule_verdict(spec, before, after)]
    return f"{spec.objective} went from {before:.{d}f} to {after:.{d}f} ({after - before:+.{d}f}, {word})"


def judge_previous_decision(m: EpochMetrics) -> Reflection | None:
    """The rule's judgement of the previous command, or None when there is none to judge yet."""
    if m.previous_command is None or len(m.history) < 2:
        return None
    spec = m.task
    before, after = m.history[-2].metrics.get(spec.objective, math.nan), m.objective_value
    verdict = rule_verdict(spec, before, after)
    text = f"{describe_objective_change(spec, before, after)} after {describe_change(m)}: the decision was {verdict}."
    return Reflection(
        epoch=m.epoch,
        about_epoch=m.history[-2].epoch,
        objective=spec.objective,
        objective_before=before,
        objective_after=after,
        verdict=verdict,
        text=text,
        rule_verdict=verdict,
    )


def reflector(state: AgentState) -> dict:
    """The rule-based reflector (no model)."""
    return {"reflection": judge_previous_decision(state["metrics"])}


def contradicts(model: Verdict, rule: Verdict) -> bool:
    """Whether a model's verdict contradicts the measurement: it calls beneficial what the rule calls harmful,
    or the reverse. The rule says either only beyond the noise band; a neutral on either side is no contradiction."""
    return {model, rule} == {"beneficial", "harmful"}


def make_reflector(judge) -> Callable[[AgentState], dict]:
    """A reflector whose verdict comes from ``judge`` (an ``agents.controllers.llm.LLMJudge``), with the rule's
    judgement as the fallback when the model fails — whatever the failure, even an exception: the
    verdict must never cost the validated command. Both verdicts are kept. A verdict that contradicts the
    measurement (:func:`contradicts`) is not fed back as truth: the reflection carries the rule's verdict, the
    model's in ``model_verdict``, and ``contradicts_measurement``; the model's sentence is kept for the record."""

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
        if contradicts(judged.verdict, rule.verdict):
            note["contradicts_measurement"] = True
            judged = judged.model_copy(
                update={"verdict": rule.verdict, "model_verdict": judged.verdict, "contradicts_measurement": True}
            )
        return {"reflection": judged, "notes": [note]}

    return model_reflector
