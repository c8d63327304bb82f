"""guard: never against the user. A confident reading of the instruction in force (``agents.expert.reading``) is a
constraint on every controller — the expert form, a model in free form, the rules, a user's controller or node —
applied to the command as it is about to leave the agent (``agents.service.decide`` runs it after the whole graph,
so no pipeline can route around it).

What the reading forbids is put back to the value this epoch used, and what it allows stays: a knob moved against
its asked direction, a knob the instruction keeps (direction 0) moved at all, and under "change nothing" every knob,
alpha, every weight modulation and a rollback (which replaces the weights). A rollback under any other reading stays:
the user may have asked for it ("go back to the best epoch"), and it moves no knob. The policy's original proposal is kept for the record
(``Decision.overridden_proposal``) and the decision's outcome is ``overridden``. A reading that is not understood
constrains nothing: the evidence decides, as without an instruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agents.expert.instructions import ALPHA, asked_directions
from agents.expert.outcome import instruction_reading, knob_moves
from agents.expert.reading import Reading
from agents.state import AgentState
from agents.trends import current_values
from bus.messages import EpochMetrics, UpdateCommand


@dataclass(frozen=True)
class Guarded:
    """The guard's verdict on one command: the ``command`` to apply, and the names put back (knob names,
    ``alpha``, ``weights``; empty: the command passed untouched)."""

    command: UpdateCommand
    put_back: tuple[str, ...] = ()

    @property
    def overridden(self) -> bool:
        return bool(self.put_back)


def proposal_record(command: UpdateCommand) -> dict[str, Any]:
    """What ``command`` proposed, as recorded in ``decisions.overridden_proposal``: its knob values, alpha, weight
    operations and the layers of its raw weight deltas (the deltas themselves are too large to keep)."""
    return {
        "hyperparameters": dict(command.hyperparameters),
        "alpha": command.alpha,
        "weight_ops": [op.model_dump() for op in command.weight_ops or []],
        "weight_modulation_layers": sorted(command.weight_modulation or {}),
        "rollback": command.rollback,
        "rationale": command.rationale[:500],
    }


def guard_command(m: EpochMetrics, command: UpdateCommand, reading: Reading | None) -> Guarded:
    """``command`` with every move the confident ``reading`` of the instruction in force at ``m`` forbids put back
    to the value epoch ``m`` used (see the module docstring); unchanged when ``reading`` is None or not understood."""
    if reading is None or not reading.understood:
        return Guarded(command)
    values = current_values(m)
    moved = knob_moves(m, command.hyperparameters, command.alpha)
    if reading.intent.kind == "hold":
        forbidden = [name for name, d in moved.items() if d != 0]
        weights = bool(command.modulated_layers()) or command.rollback
    else:
        asked = asked_directions(reading.intent, values, m.alpha)
        forbidden = [name for name, d in asked.items() if moved.get(name, 0) not in (0, d)]
        weights = False
    if not forbidden and not weights:
        return Guarded(command)
    knobs = {name: values[name] if name in forbidden else v for name, v in command.hyperparameters.items()}
    update: dict[str, Any] = {"hyperparameters": knobs, "alpha": m.alpha if ALPHA in forbidden else command.alpha}
    if weights:
        update.update(weight_modulation=None, weight_ops=None, rollback=False)
    put_back = tuple(forbidden) + (("weights",) if weights else ())
    # The policy's rationale argued for moves that are not made: the command says what the guard did first.
    update["rationale"] = f"put back {', '.join(put_back)}: against the instruction ({reading.said_back(m.task)}); " \
                          f"the policy proposed: {command.rationale}"[:2000]
    return Guarded(command.model_copy(update=update), put_back)


def guard(state: AgentState) -> dict:
    """The guard as a node (``state -> partial update``): the guarded ``command``, the policy's ``overridden``
    proposal, and a note ``{"node": "guard", "action": "instruction_guard", "put_back", "reading"}``; nothing when
    there is no command or nothing to put back."""
    command = state.get("command")
    if command is None:
        return {}
    m = state["metrics"]
    reading = instruction_reading(m)
    guarded = guard_command(m, command, reading)
    if not guarded.overridden:
        return {}
    note = {"node": "guard", "action": "instruction_guard", "put_back": list(guarded.put_back),
            "reading": reading.said_back(m.task)}  # fmt: skip
    return {"command": guarded.command, "overridden": proposal_record(command), "notes": [note]}
