"""Judging a command against the user's instruction in force: whether it followed it, went against it, or held.
Recorded for every controller (``decisions.instruction_outcome``, ``decisions.held``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from agents.expert.instructions import ALPHA, Intent, asked_directions, moved_value, target_direction
from agents.expert.reading import Reading, read
from agents.trends import current_values, weight_layers
from bus.messages import EpochMetrics, UpdateCommand

if TYPE_CHECKING:
    from agents.expert.candidates import Candidate

Outcome = Literal["followed", "ignored", "contradicted", "respected", "overridden"]


def knob_moves(m: EpochMetrics, values: dict[str, float], alpha: float) -> dict[str, int]:
    """Knob (and ``alpha``) -> +1, 0 or -1: how ``values`` and ``alpha`` move from what epoch ``m`` used."""
    current = current_values(m)
    moved = {name: m.task.knob(name).direction(values.get(name, v), v) for name, v in current.items()}
    moved[ALPHA] = (alpha > m.alpha) - (alpha < m.alpha)
    return moved


def against(moved: dict[str, int], asked: dict[str, int]) -> bool:
    """Whether the moves go against what is asked: a knob moved opposite to its direction, or a kept knob
    (direction 0) moved at all."""
    return any(moved.get(name, 0) != 0 and moved.get(name, 0) != direction for name, direction in asked.items())


def instruction_reading(m: EpochMetrics) -> Reading | None:
    """The reading of the instruction in force at ``m`` (``agents.expert.reading.read``), None without one."""
    if m.instruction is None:
        return None
    return read(m.instruction.text, m.task, weight_layers(m))


def instruction_outcome(m: EpochMetrics, command: UpdateCommand) -> Outcome | None:
    """Whether ``command`` followed the instruction in force at ``m`` (None without one, or one not understood):
    ``contradicted`` (moved a knob against it, moved a knob it says to keep, or changed anything
    when told to change nothing), ``followed`` (moved every named knob as asked — or found it at its bound —,
    applied the weight operation, pursued the goal, held as told), ``ignored`` (neither), and ``respected`` for
    a later decision under a one-shot instruction that did not go against it."""
    reading = instruction_reading(m)
    if reading is None or not reading.understood:
        return None
    intent = reading.intent
    values = current_values(m)
    moved = knob_moves(m, command.hyperparameters, command.alpha)
    if intent.kind == "hold":
        return "contradicted" if any(moved.values()) or command.modulated_layers() or command.rollback else "followed"
    asked = asked_directions(intent, values, m.alpha)
    if against(moved, asked):
        return "contradicted"
    if not (intent.repeat or m.instruction_first_decision):
        return "respected"
    if intent.rollback and not command.rollback:  # asked once, at this first decision
        return "ignored"
    if intent.kind == "goal":
        return "followed" if any(moved.get(name, 0) == d for name, d in asked.items() if d != 0) else "ignored"
    for move in intent.moves:
        if move.op is not None and move.layer not in command.modulated_layers():
            return "ignored"
        direction = target_direction(move, values, m.alpha)
        if move.knob is None or direction == 0 or moved.get(move.knob, 0) == direction:
            continue
        knob = m.task.knob(move.knob) if move.knob != ALPHA else None
        if knob is None or moved_value(knob, values[move.knob], move) != values[move.knob]:  # not merely at its bound
            return "ignored"
    return "followed"


def held(m: EpochMetrics, command: UpdateCommand) -> bool:
    """Whether ``command`` changes nothing: every knob and alpha as they were, no weight modulation, no rollback."""
    moved = any(knob_moves(m, command.hyperparameters, command.alpha).values())
    return not moved and not command.modulated_layers() and not command.rollback


def moves_against_instruction(candidate: Candidate, m: EpochMetrics, intent: Intent) -> bool:
    """Whether ``candidate`` moves a knob against the instruction ``intent`` (one to hold: any move at all; a
    kept knob: any move of it)."""
    moved = knob_moves(m, candidate.values, candidate.alpha)
    if intent.kind == "hold":
        return any(moved.values()) or bool(candidate.weight_changes)
    return against(moved, asked_directions(intent, current_values(m), m.alpha))
