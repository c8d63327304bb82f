"""What a policy proposes for the next epoch, before any check: the contract between every controller and the
checks (``agents.proposals.check``).

A rule policy, a replay, the expert form and a user's controller build a :class:`Proposal` directly; a chat
model's answer text is read into one by ``agents.proposals.parse``. Either way the same checks run once in the
agent (bounds, trust region, grid, weight-operation caps) and turn it into the ``UpdateCommand`` the trainer
applies. Values are kept as given (a parsed answer may hold a string or a list where a number belongs): telling
what is wrong with them is the checker's job, so that every policy's mistakes are reported the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bus.messages import UpdateCommand

OPERATIONS = ("scale", "shrink", "noise")  # bus.messages.WeightOp.op


@dataclass(frozen=True)
class WeightChange:
    """One layer's weight change as proposed: a compact operation (``op`` one of :data:`OPERATIONS`, ``value`` its
    factor, amount or scale, ``seed`` the noise seed or None to derive one) or, with ``op`` None, a raw delta
    (``value`` a nested list shaped like the layer)."""

    layer: str
    op: Any = None
    value: Any = None
    seed: Any = None

    @property
    def is_delta(self) -> bool:
        return self.op is None

    def as_answer(self) -> Any:
        """How an answer text writes this change: the delta itself, or ``{"op", "value"[, "seed"]}``."""
        if self.is_delta:
            return self.value
        return {"op": self.op, "value": self.value, **({"seed": self.seed} if self.seed is not None else {})}


@dataclass(frozen=True)
class Proposal:
    """A policy's proposed command and what is known about how it was made.

    ``hyperparameters``: knob name -> proposed value (a knob left out is an error for the repairer);
    ``alpha``: the blend ratio in [0, 1] (None: not given); ``weight_changes``: in the order given, at most one per
    layer counts; ``rationale``: one or two sentences. Metadata, recorded with the decision: ``choice`` (the
    expert form's candidate key) and ``margin`` (its calibrated score over the runner-up, nats), the model's
    token counts, the ``reading`` of the user's instruction it acted on (``Intent.words()``), the ``prompt`` the
    model read when it was not the prompter's, ``notes`` to record (dicts, JSON-serialisable), and
    ``ignored_fields`` (fields of an answer text that no command has)."""

    hyperparameters: dict[str, Any]
    alpha: Any = None
    weight_changes: tuple[WeightChange, ...] = ()
    rationale: Any = ""
    choice: str | None = None
    margin: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reading: str | None = None
    prompt: str | None = None
    notes: tuple[dict, ...] = ()
    ignored_fields: tuple[str, ...] = field(default=())

    @classmethod
    def from_command(cls, command: UpdateCommand, **metadata) -> Proposal:
        """The proposal that repeats ``command`` exactly: knobs, alpha, raw deltas and operations with their
        recorded seeds (so replayed noise is the recorded noise), rationale."""
        changes = [WeightChange(layer, None, delta) for layer, delta in (command.weight_modulation or {}).items()]
        changes += [WeightChange(op.layer, op.op, op.value, op.seed) for op in command.weight_ops or []]
        return cls(dict(command.hyperparameters), command.alpha, tuple(changes), command.rationale, **metadata)

    def answer_text(self) -> str:
        """The proposal as one flat JSON object, the form a model answers in: the knobs, ``alpha``,
        ``weight_modulation`` (by layer) when there is any, ``rationale``. What ``decisions.raw_output`` records
        for a policy that writes no text."""
        modulation = {c.layer: c.as_answer() for c in self.weight_changes}
        extra = {"weight_modulation": modulation} if modulation else {}
        return json.dumps({**self.hyperparameters, "alpha": self.alpha, **extra, "rationale": self.rationale})
