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


class _NotGiven:
    """A field the proposal does not give (an answer without ``alpha``), as opposed to one given as null."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Any = _NotGiven()


@dataclass(frozen=True)
class WeightChange:
    """One layer's weight change as proposed: a compact operation (``op`` one of :data:`OPERATIONS`, ``value`` its
    factor, amount or scale, written under ``key``; ``seed`` the noise seed, or not given to derive one) or, with
    ``is_delta``, a raw delta (``value`` a nested list shaped like the layer)."""

    layer: str
    op: Any = None
    value: Any = None
    seed: Any = NOT_GIVEN
    key: str = "value"  # how an answer names the op's value ("factor" for scale, "scale" for noise, or "value")
    is_delta: bool = False

    def as_answer(self) -> Any:
        """How an answer text writes this change: the delta itself, or ``{"op", key: value[, "seed"]}``."""
        if self.is_delta:
            return self.value
        return {"op": self.op, self.key: self.value, **({"seed": self.seed} if self.seed is not NOT_GIVEN else {})}


@dataclass(frozen=True)
class Proposal:
    """A policy's proposed command and what is known about how it was made.

    ``hyperparameters``: knob name -> proposed value (a knob left out is an error for the repairer, one the task
    does not have is ignored and recorded); ``alpha``: the blend ratio in [0, 1]; ``weight_changes``: in the order given, at most one per
    layer counts; ``rationale``: one or two sentences; ``rollback``: return to the best epoch so far first (as
    given: anything but ``True``/``False`` is the checker's error). Metadata, recorded with the decision: ``choice`` (the
    expert form's candidate key) and ``margin`` (its calibrated score over the runner-up, nats), the model's
    token counts, the ``reading`` of the user's instruction it acted on (``Intent.words()``), the ``prompt`` the
    model read when it was not the prompter's, ``notes`` to record (dicts, JSON-serialisable), and
    ``ignored_fields`` (fields of an answer text that no command has)."""

    hyperparameters: dict[str, Any]
    alpha: Any = NOT_GIVEN
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
    rollback: Any = False

    @classmethod
    def from_command(cls, command: UpdateCommand, **metadata) -> Proposal:
        """The proposal that repeats ``command`` exactly: knobs, alpha, raw deltas and operations with their
        recorded seeds (so replayed noise is the recorded noise), rationale, rollback."""
        changes = [
            WeightChange(layer, None, delta, is_delta=True)
            for layer, delta in (command.weight_modulation or {}).items()
        ]
        changes += [WeightChange(op.layer, op.op, op.value, op.seed) for op in command.weight_ops or []]
        return cls(
            dict(command.hyperparameters), command.alpha, tuple(changes), command.rationale,
            rollback=command.rollback, **metadata,
        )  # fmt: skip

    def answer_text(self) -> str:
        """The proposal as one flat JSON object, the form a model answers in: the knobs, ``alpha``,
        ``weight_modulation`` when there is any, ``rationale``. What ``decisions.raw_output`` records for a policy
        that writes no text; ``"rollback": true`` only when it asks one. Weight changes are written as a list of operations (``[{"layer", "op", "factor"}]``,
        as a model writes them) unless one is a raw delta or carries its seed (a replayed command): then by layer.
        Values JSON cannot hold (numpy arrays and scalars) are written as lists and numbers."""
        modulation: Any = None
        if self.weight_changes and all(not c.is_delta and c.seed is NOT_GIVEN for c in self.weight_changes):
            modulation = [{"layer": c.layer, **c.as_answer()} for c in self.weight_changes]
        elif self.weight_changes:
            modulation = {c.layer: c.as_answer() for c in self.weight_changes}
        extra = {"weight_modulation": modulation} if modulation is not None else {}
        alpha = {"alpha": self.alpha} if self.alpha is not NOT_GIVEN else {}
        rollback = {"rollback": self.rollback} if self.rollback is not False else {}
        answer = {**self.hyperparameters, **alpha, **extra, **rollback, "rationale": self.rationale}
        return json.dumps(answer, default=_plain)


def _plain(value: Any) -> Any:
    """A value ``json`` cannot write, as one it can: numpy arrays and scalars through ``tolist``, else its text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)
