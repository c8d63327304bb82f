"""The expert block: what a user's instruction asks, what the measured trends say, and the few candidate
actions a model chooses among.

A 135M-parameter model cannot read a training state and an instruction and derive a good command by itself
(``../shared/notes/small-model-guidance.md``: free generation and plain enum choice follow position and prior
biases). Local 14B-32B models come within about a point of GPT-4 at hyperparameter tuning only with a
deterministic summary of the trajectory (arXiv 2509.15561); a 135M model needs at least as much help. So this
module, with no model, turns the state into a :class:`Plan`: the instruction read as an ``Intent``
(``agents.instructions``), the evidence read as a ``Signal`` (``agents.evidence``), and the :class:`Candidate`
actions that are consistent with both, each with its reason. A chooser (``agents.expert``) lets the model pick one and say
why; the validator still bounds the command.

Precedence: the user's instruction, then the evidence. A one-shot instruction ("halve the learning rate") is
carried out at the first decision it shapes; afterwards it constrains (no candidate moves against it) until
it is replaced or withdrawn. Instructions that say "every epoch"/"keep lowering" repeat, and "change nothing"
holds every decision.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from agents.evidence import Signal, read_signal
from agents.instructions import ALPHA, GOAL_MOVES, Intent, Move, asked_directions, read_instruction, target_direction
# The heuristic's limits: the evidence alone moves knobs no further than the rule policy does.
from agents.policies import MAX_HEURISTIC_DROPOUT, MIN_LR
from agents.trends import current_values, step_digits
from bus.messages import EpochMetrics, Hyperparameter, UpdateCommand

ALPHA_STEP = 0.2  # how far "lower alpha" moves it (the grid command space's step)
Outcome = Literal["followed", "ignored", "contradicted", "respected"]


@dataclass(frozen=True)
class Candidate:
    """One action a chooser may pick: ``key`` identifies it in records (``learning_rate:down``, ``hold``),
    ``text`` is how a model reads and scores it ("halve the learning rate"), ``values`` the knob values it
    sets (every knob), ``alpha``, weight operations as the validator reads them, the expert's reason, and the
    changes with their numbers."""

    key: str
    text: str
    values: dict[str, float]
    alpha: float
    weight_modulation: list[dict] = field(default_factory=list)
    reason: str = ""
    changes: str = ""  # the numbers: "learning_rate 0.001 -> 0.0005"


@dataclass(frozen=True)
class Plan:
    """The expert block's output for one decision: the intent, the signal, and at least one candidate."""

    intent: Intent
    signal: Signal
    candidates: tuple[Candidate, ...]
    source: Literal["instruction", "evidence"]


# --------------------------------------------------------------------------- candidates


KNOB_WORDS = {"learning_rate": "the learning rate", "ent_coef": "the entropy coefficient", "clip_range": "the clip range"}


def knob_words(name: str) -> str:
    """How a candidate's text names a knob: "the learning rate", "dropout", "weight decay"."""
    return KNOB_WORDS.get(name, name.replace("_", " "))


def evidence_bounds(knob: Hyperparameter) -> tuple[float, float]:
    """How far the evidence alone may move a knob: as the heuristic, the learning rate not below ``MIN_LR`` and
    dropout not above ``MAX_HEURISTIC_DROPOUT``; any knob within its hard bounds. A user's instruction may go
    to the hard bounds."""
    low, high = knob.low, knob.high
    if knob.name == "learning_rate":
        low = max(low, MIN_LR)
    if knob.name == "dropout":
        high = min(high, MAX_HEURISTIC_DROPOUT)
    return low, high


def moved_value(knob: Hyperparameter, current: float, move: Move, bounds: tuple[float, float] | None = None) -> float:
    """Where ``move`` takes ``knob`` from ``current``: its target, factor or amount, else one step; inside
    ``bounds`` (default: the hard bounds; the validator then applies the trust region and records a clamp)."""
    if move.target is not None:
        value = move.target
    elif knob.scale == "log":
        factor = move.factor if move.factor is not None else knob.step ** move.direction
        value = current * factor if move.amount is None else current + move.direction * move.amount
    else:
        amount = move.amount if move.amount is not None else knob.step
        value = current * move.factor if move.factor is not None else current + move.direction * amount
        value = round(value, step_digits(knob))
    low, high = bounds or (knob.low, knob.high)
    return min(max(value, low), high)


def move_text(name: str, old: float, new: float, knob: Hyperparameter | None) -> str:
    """"halve the learning rate", "raise dropout": a change in plain words, without numbers (a model scores
    this text; the numbers are in :func:`change_text`)."""
    if knob is not None and knob.scale == "log" and old > 0:
        ratio = new / old
        for factor, words in ((0.5, "halve {}"), (2.0, "double {}"), (1 / 3, "cut {} to a third"), (3.0, "triple {}")):
            if math.isclose(ratio, factor, rel_tol=1e-3):
                return words.format(knob_words(name))
    return f"{'raise' if new > old else 'lower'} {knob_words(name)}"


def change_text(name: str, old: float, new: float) -> str:
    return f"{name} {old:.3g} -> {new:.3g}"


def weight_operation(m: EpochMetrics, move: Move) -> tuple[dict, str, str]:
    """A weight move as the validator reads it (``scale`` with its factor, ``noise`` with its scale), in words,
    and with its number."""
    if move.op == "noise":
        value, what = move.amount, "add a little noise to"
    else:
        value, what = round(1 + move.direction * move.amount, 4), "shrink" if move.direction < 0 else "grow"
    where = "last" if move.layer == weight_layers(m)[-1] else move.layer.rsplit(".", 1)[0]
    operation = {"layer": move.layer, "op": move.op, "scale" if move.op == "noise" else "factor": value}
    return operation, f"{what} the weights of the {where} layer", f"{move.op} {move.layer} {value:.3g}"


def alpha_after(alpha: float, move: Move) -> float:
    """Alpha after ``move``: its target, or one :data:`ALPHA_STEP` (or its amount) in its direction, in [0, 1]."""
    new = move.target if move.target is not None else alpha + move.direction * (move.amount or ALPHA_STEP)
    return min(1.0, max(0.0, new))


def apply_moves(m: EpochMetrics, moves: tuple[Move, ...], evidence: bool = False) -> Candidate | None:
    """The candidate carrying out every move, or None when none of them changes anything (all at a bound;
    with ``evidence``, the tighter :func:`evidence_bounds`, and only in the move's own direction)."""
    values, alpha = current_values(m), m.alpha
    words, operations, keys, numbers = [], [], [], []
    for move in moves:
        if move.op is not None:
            operation, text, number = weight_operation(m, move)
            operations.append(operation)
            words.append(text)
            numbers.append(number)
            keys.append(f"{move.op}:{move.layer}")
            continue
        if move.direction == 0 and move.target is None:  # a kept knob: nothing to do
            continue
        old = alpha if move.knob == ALPHA else values[move.knob]
        if move.knob == ALPHA:
            new = alpha_after(alpha, move)
            text = f"{'raise' if new > old else 'lower'} alpha"
        else:
            knob = m.task.knob(move.knob)
            new = moved_value(knob, old, move, evidence_bounds(knob) if evidence else None)
            text = move_text(move.knob, old, new, knob)
        step = (new > old) - (new < old)
        if math.isclose(new, old, rel_tol=1e-9, abs_tol=1e-12) or (evidence and step != move.direction):
            continue
        words.append(text)
        numbers.append(change_text(move.knob, old, new))
        keys.append(f"{move.knob}:{'up' if step > 0 else 'down'}")
        if move.knob == ALPHA:
            alpha = new
        else:
            values[move.knob] = new
    if not words:
        return None
    return Candidate("+".join(keys), " and ".join(words), values, alpha, operations, changes=", ".join(numbers))


def hold_candidate(m: EpochMetrics, reason: str) -> Candidate:
    """The candidate that changes nothing."""
    return Candidate("hold", "keep every hyperparameter as it is", current_values(m), m.alpha, [], reason, "no change")


def goal_candidates(m: EpochMetrics, goal: str, reason: str, evidence: bool = False) -> list[Candidate]:
    """One candidate per move of ``goal`` that the task has and can still make (within :func:`evidence_bounds`
    when the evidence, not the user, asks)."""
    names = {*m.task.knob_names(), ALPHA}
    found = []
    for name, direction in GOAL_MOVES.get(goal, ()):
        if name in names and (c := apply_moves(m, (Move(name, direction),), evidence)) is not None:
            found.append(dataclasses.replace(c, reason=reason))
    return found


SIGNAL_GOALS = {"diverging": "stability", "plateau": "escape the plateau", "overfitting": "less overfitting"}


def evidence_candidates(m: EpochMetrics, signal: Signal) -> list[Candidate]:
    """Candidates the evidence supports: a diverging run -> lower the learning rate (by the knob's step, or to a third),
    lower alpha, tighten a clip range; a plateau -> halve the learning rate or cut it to a third; a widening gap
    -> a regulariser up or the learning rate down; anything else (steady gains, no clear trend, a change still
    settling, the first epoch) -> hold."""
    if signal.kind not in SIGNAL_GOALS:
        return [hold_candidate(m, signal.reason)]
    found = goal_candidates(m, SIGNAL_GOALS[signal.kind], signal.reason, evidence=True)
    if signal.kind in ("diverging", "plateau") and "learning_rate" in m.task.knob_names():
        third = apply_moves(m, (Move("learning_rate", -1, factor=1 / 3),), evidence=True)
        if third is not None and third.values != (found[0].values if found else None):
            found.append(dataclasses.replace(third, key=third.key + ":third", reason=signal.reason))
    return found or [hold_candidate(m, f"{signal.reason}, but every knob that could answer it is at its limit")]


def weight_layers(m: EpochMetrics) -> list[str]:
    """The names of the weight tensors the agent may modulate, first layer to last."""
    return [name for name in m.param_shapes if name.endswith("weight")]


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


def moves_against_instruction(candidate: Candidate, m: EpochMetrics, intent: Intent) -> bool:
    """Whether ``candidate`` moves a knob against the instruction ``intent`` (one to hold: any move at all; a
    kept knob: any move of it)."""
    moved = knob_moves(m, candidate.values, candidate.alpha)
    if intent.kind == "hold":
        return any(moved.values()) or bool(candidate.weight_modulation)
    return against(moved, asked_directions(intent, current_values(m), m.alpha))


def plan_decision(m: EpochMetrics) -> Plan:
    """The :class:`Plan` for the decision after ``m``: the instruction's candidates at the first decision it
    shapes (or at every one when it repeats or holds; for an instruction the lexicon cannot read, a hold and one
    step of every knob either way, for the model to choose among), else the evidence's candidates minus those
    that move against the instruction in force. Always at least one candidate."""
    intent = read_instruction(m.instruction.text if m.instruction else None, m.task, weight_layers(m))
    signal = read_signal(m)
    quoted = f"the user asked: {m.instruction.text[:120]!r}" if m.instruction else ""
    acting = intent.repeat or m.instruction_first_decision
    if intent.kind == "hold":
        return Plan(intent, signal, (hold_candidate(m, quoted),), "instruction")
    if intent.kind == "explicit" and acting:
        c = apply_moves(m, intent.moves)
        if c is None:
            kept = all(move.direction == 0 and move.target is None for move in intent.moves)
            why = "it asks to keep these values" if kept else "every knob it names is already at its bound"
            return Plan(intent, signal, (hold_candidate(m, f"{quoted}; {why}"),), "instruction")
        return Plan(intent, signal, (dataclasses.replace(c, reason=quoted),), "instruction")
    if intent.kind == "unread" and acting:  # the lexicon cannot read it: the model reads it, choosing any one step
        options = [hold_candidate(m, quoted)] + [
            c for name in m.task.knob_names() for d in (-1, 1) if (c := apply_moves(m, (Move(name, d),))) is not None
        ]
        reason = f"{quoted}; the expert block cannot read it, the model chooses"
        return Plan(intent, signal, tuple(dataclasses.replace(c, reason=reason) for c in options), "instruction")
    if intent.kind == "goal" and acting:
        found = goal_candidates(m, intent.goal or "", f"{quoted} ({intent.goal})")
        if found:
            return Plan(intent, signal, tuple(found), "instruction")
    found = [c for c in evidence_candidates(m, signal) if not moves_against_instruction(c, m, intent)]
    return Plan(intent, signal, tuple(found or [hold_candidate(m, f"{signal.reason}; the instruction in force rules out the rest")]), "evidence")


# --------------------------------------------------------------------------- judging a command against the instruction


def instruction_outcome(m: EpochMetrics, command: UpdateCommand) -> Outcome | None:
    """Whether ``command`` followed the instruction in force at ``m`` (None without one, or one this lexicon
    cannot read): ``contradicted`` (moved a knob against it, moved a knob it says to keep, or changed anything
    when told to change nothing), ``followed`` (moved every named knob as asked — or found it at its bound —,
    applied the weight operation, pursued the goal, held as told), ``ignored`` (neither), and ``respected`` for
    a later decision under a one-shot instruction that did not go against it."""
    intent = read_instruction(m.instruction.text if m.instruction else None, m.task, weight_layers(m))
    if intent.kind in ("none", "unread"):
        return None
    values = current_values(m)
    moved = knob_moves(m, command.hyperparameters, command.alpha)
    if intent.kind == "hold":
        return "contradicted" if any(moved.values()) or command.modulated_layers() else "followed"
    asked = asked_directions(intent, values, m.alpha)
    if against(moved, asked):
        return "contradicted"
    if not (intent.repeat or m.instruction_first_decision):
        return "respected"
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
    """Whether ``command`` changes nothing: every knob and alpha as they were, no weight modulation."""
    return not any(knob_moves(m, command.hyperparameters, command.alpha).values()) and not command.modulated_layers()
