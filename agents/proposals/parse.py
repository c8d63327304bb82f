"""Reading a model's answer text into a :class:`~agents.proposals.proposal.Proposal`.

Only policies that produce text (a chat model in the free form, a user's controller answering text) are parsed;
every other policy hands over a typed ``Proposal``. :func:`parse_answer` finds the JSON object
(``agents.proposals.answer_text``: reasoning set aside, lenient JSON, several objects, a cut-off answer) and
takes what models commonly send: a number written as a string (``{"dropout": "0.2"}``, what some servers do to
every number) is read as that number, with a note; a string that is not a number stays as it is, for the checker
to refuse. Weight changes are read in every accepted form: an object by layer (a raw delta, or an operation), a
list of operations with their ``layer``, or one operation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from agents.proposals.answer_text import find_answer_object
from agents.proposals.proposal import NOT_GIVEN, Proposal, WeightChange
from bus.messages import EpochMetrics

ALPHA = "alpha"  # the trainer's blend ratio: every command has it beside the task's knobs
MAX_ANSWER_CHARS = 16 * 1024 * 1024
MAX_IGNORED_FIELDS = 20
OP_VALUE_KEYS = {"scale": "factor", "shrink": "amount", "noise": "scale"}  # how an answer names an op's value
ROLLBACK = "rollback"  # an optional answer field: true returns to the best epoch so far first


@dataclass
class ParsedAnswer:
    """What :func:`parse_answer` read: the ``proposal`` (None when the text holds no usable object), ``errors`` in
    the text's structure that no value check would find, and ``notes`` on how the object was found."""

    proposal: Proposal | None
    errors: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


def required_fields(m: EpochMetrics) -> list[str]:
    """The numeric fields every answer must have: the task's knobs by name, then ``alpha``."""
    return [*m.task.knob_names(), ALPHA]


def number_from_text(value: Any) -> Any:
    """A string holding one decimal number (``"5e-4"``, ``" 0.2 "``) as that float; anything else unchanged.
    ``"nan"``/``"inf"`` stay strings: a model that writes them means no number."""
    if not isinstance(value, str):
        return value
    try:
        number = float(value.strip())
    except ValueError:
        return value
    return number if math.isfinite(number) else value


def rollback_from_text(value: Any) -> Any:
    """An answer's ``rollback`` as a bool when it is one, or written as one (``"true"``, ``"false"``, as some
    servers write every value); anything else unchanged, for the checker to refuse. Null means no rollback."""
    if value is None:
        return False
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def weight_changes(raw: Any, errors: list[str]) -> tuple[WeightChange, ...]:
    """The weight changes of an answer's ``weight_modulation`` in any accepted form; a malformed entry is an
    error naming it. Numbers written as strings are read as numbers."""
    if raw is None or raw == {} or raw == []:
        return ()
    if isinstance(raw, dict) and "layer" in raw and "op" in raw:
        raw = [raw]
    if isinstance(raw, list):
        items = []
        for spec in raw:
            if not isinstance(spec, dict) or not isinstance(spec.get("layer"), str):
                errors.append(f'each weight operation must be an object with "layer" and "op", got {str(spec)[:80]!r}')
                continue
            items.append((spec["layer"], spec))
    elif isinstance(raw, dict):
        items = list(raw.items())
    else:
        errors.append(f"weight_modulation must be an object or a list of operations, got {type(raw).__name__}")
        return ()
    return tuple(_weight_change(layer, spec) for layer, spec in items)


def _weight_change(layer: str, spec: Any) -> WeightChange:
    """A raw delta (anything but an object), or an operation object: its ``op``, its value under the op's own name
    (``factor``, ``amount``, ``scale``) or ``value``, and its ``seed`` if it gives one (even null: the checker
    records replacing it)."""
    if not isinstance(spec, dict):
        return WeightChange(layer, None, spec, is_delta=True)
    op = spec.get("op")
    own = OP_VALUE_KEYS.get(op) if isinstance(op, str) else None
    key = own if own is not None and own in spec else "value"
    return WeightChange(layer, op, number_from_text(spec.get(key)), spec.get("seed", NOT_GIVEN), key)


def proposal_from_object(answer: dict, m: EpochMetrics, notes: dict[str, Any]) -> tuple[Proposal, list[str]]:
    """The proposal an answer object makes, and the structural errors in it; numbers written as strings are
    read as numbers and listed in ``notes["numbers_as_strings"]``."""
    required = required_fields(m)
    as_strings = [name for name in required if isinstance(answer.get(name), str)]
    values = {name: number_from_text(answer[name]) for name in required if name in answer}
    converted = [name for name in as_strings if not isinstance(values[name], str)]
    if converted:
        notes["numbers_as_strings"] = f"{converted} were written as strings and read as numbers"
    errors: list[str] = []
    changes = weight_changes(answer.get("weight_modulation"), errors)
    ignored = sorted(set(answer) - {*required, "weight_modulation", "rationale", ROLLBACK})[:MAX_IGNORED_FIELDS]
    proposal = Proposal(
        hyperparameters={name: values[name] for name in m.task.knob_names() if name in values},
        alpha=values.get(ALPHA, NOT_GIVEN),
        weight_changes=changes,
        rationale=answer.get("rationale", ""),
        ignored_fields=tuple(ignored),
        rollback=rollback_from_text(answer.get(ROLLBACK, False)),
    )
    return proposal, errors


def parse_answer(text: str, m: EpochMetrics) -> ParsedAnswer:
    """The proposal in a model's answer ``text`` for the task after epoch ``m``. Never raises, whatever the text's
    size or nesting: what cannot be read is an error for the repairer."""
    if len(text) > MAX_ANSWER_CHARS:
        return ParsedAnswer(None, [f"answer of {len(text)} characters exceeds {MAX_ANSWER_CHARS}"])
    found = find_answer_object(text, tuple(required_fields(m)))
    if found.value is None:
        return ParsedAnswer(None, [found.error or "answer contains no JSON object"], found.notes)
    notes = dict(found.notes)
    proposal, errors = proposal_from_object(found.value, m, notes)
    return ParsedAnswer(proposal, errors, notes)
