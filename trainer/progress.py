"""The trainer's terminal line per epoch: the objective first, the knobs used, and the decision for the next."""

from __future__ import annotations

import math

from bus.messages import Decision, EpochSummary, Instruction, TaskSpec
from trainer.config import TrainerConfig


def format_knobs(spec: TaskSpec, values: dict[str, float], alpha: float) -> str:
    """``learning_rate 1.00e-03 dropout 0.2 alpha 0.40``: log-scale knobs in scientific notation."""
    parts = [
        f"{k.name} {values[k.name]:.2e}" if k.scale == "log" else f"{k.name} {values[k.name]:.3g}"
        for k in spec.hyperparameters
        if k.name in values
    ]
    return " ".join([*parts, f"alpha {alpha:.2f}"])


def format_metrics(spec: TaskSpec, metrics: dict[str, float], others: int = 3) -> str:
    """The objective first, then up to ``others`` more metrics in the task's order, 4 significant digits."""
    names = [spec.objective, *[n for n in metrics if n != spec.objective][:others]]
    return " ".join(f"{n} {metrics.get(n, math.nan):.4g}" for n in names)


def progress_line(
    cfg: TrainerConfig, spec: TaskSpec, summary: EpochSummary, decision: Decision | None, waited_ms: float = 0.0,
    instruction: Instruction | None = None,
) -> str:
    """One terminal line per epoch; ``waited_ms`` is the time the trainer spent on the decision (retries and
    timeouts included), not the agent's own latency. The instruction in force is shown as read, or, when the
    controller does not read instructions (``cfg.instructions_read``), as only guarding against contrary moves."""
    line = (
        f"{cfg.arm:<8} {spec.name} {cfg.regime:>5} seed {cfg.seed} | epoch {summary.epoch:>3}/{cfg.epochs} | "
        f"{format_metrics(spec, summary.metrics)} | {format_knobs(spec, summary.hyperparameters, summary.alpha)}"
    )
    if decision is not None:
        c = decision.command
        how = "fallback" if decision.fallback else "valid" if decision.valid else f"repaired x{decision.repair_attempts}"
        verdict = f" | prev: {decision.reflection.verdict}" if decision.reflection else ""
        line += f" -> next {format_knobs(spec, c.hyperparameters, c.alpha)} [{how}, {waited_ms:.0f} ms]{verdict}"
    if instruction is not None:
        text = instruction.text if len(instruction.text) <= 40 else instruction.text[:37] + "..."
        # A controller that does not read it is only kept from moving against it: not "in force" as a request.
        guarded = "" if cfg.instructions_read else f" (not read by {cfg.controller}; only guarded)"
        line += f" | instruction{guarded}: {text!r}"
    return line
