"""The expert block: what a user's instruction asks, what the measured trends say, and the few candidate
actions a model chooses among.

A 135M-parameter model cannot read a training state and an instruction and derive a good command by itself
(``../shared/notes/small-model-guidance.md``: free generation and plain enum choice follow position and prior
biases). Local 14B-32B models come within about a point of GPT-4 at hyperparameter tuning only with a
deterministic summary of the trajectory (arXiv 2509.15561); a 135M model needs at least as much help. So this
module, with no model, turns the state into a :class:`Plan`: the instruction read as an ``Intent``
(``agents.expert.instructions``), the evidence read as a ``Signal`` (``agents.expert.evidence``), and the
:class:`Candidate` actions that are consistent with both, each with its reason. A chooser
(``agents.expert.choosers``) lets the model pick one and say why; the checks still bound the command.

Precedence: the user's instruction, then the evidence. A one-shot instruction ("halve the learning rate") is
carried out at the first decision it shapes; afterwards it constrains (no candidate moves against it) until
it is replaced or withdrawn. Instructions that say "every epoch"/"keep lowering" repeat, and "change nothing"
holds every decision. A rollback ("go back to the best epoch") is carried out once, at the first decision the
instruction shapes; the evidence proposes one after a collapse (``agents.controllers.rules.collapse``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

# The rules' limits: the evidence alone moves knobs no further than the heuristic does.
from agents.controllers.rules import evidence_bounds, learning_rate_knob
from agents.expert.evidence import Signal, read_signal
from agents.expert.instructions import ALPHA, Intent, Move, goal_moves, moved_value
from agents.expert.reading import Reading, read
from agents.expert.outcome import moves_against_instruction
from agents.prompts import FACTOR_PHRASES, HOLD_PHRASE
from agents.proposals.proposal import WeightChange
from agents.trends import current_values, weight_layers
from bus.messages import EpochMetrics, Hyperparameter

ALPHA_STEP = 0.2  # how far "lower alpha" moves it (the grid command space's step)


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
    weight_changes: tuple[WeightChange, ...] = ()
    reason: str = ""
    changes: str = ""  # the numbers: "learning_rate 0.001 -> 0.0005"
    asked: bool = False  # the confident reading's own moves make it: only then is it justified by "you asked"
    rollback: bool = False  # return to the best epoch so far first (``UpdateCommand.rollback``)


@dataclass(frozen=True)
class Plan:
    """The expert block's output for one decision: the intent, the signal, and at least one candidate."""

    intent: Intent
    signal: Signal
    candidates: tuple[Candidate, ...]
    source: Literal["instruction", "evidence"]


# --------------------------------------------------------------------------- candidates


def move_text(old: float, new: float, knob: Hyperparameter) -> str:
    """ "halve the learning rate", "raise dropout": a change in plain words, without numbers (a model scores
    this text; the numbers are in :func:`change_text`)."""
    if knob.scale == "log" and old > 0:
        ratio = new / old
        for factor, words in FACTOR_PHRASES:
            if math.isclose(ratio, factor, rel_tol=1e-3):
                return words.format(knob.prose())
    return f"{'raise' if new > old else 'lower'} {knob.prose()}"


def change_text(name: str, old: float, new: float) -> str:
    return f"{name} {old:.3g} -> {new:.3g}"


def weight_operation(m: EpochMetrics, move: Move) -> tuple[WeightChange, str, str]:
    """A weight move as a proposal carries it (``scale`` with its factor, ``noise`` with its scale), in words,
    and with its number."""
    if move.op == "noise":
        value, what = move.amount, "add a little noise to"
    else:
        value, what = round(1 + move.direction * move.amount, 4), "shrink" if move.direction < 0 else "grow"
    where = "last" if move.layer == weight_layers(m)[-1] else move.layer.rsplit(".", 1)[0]
    return (
        WeightChange(move.layer, move.op, value, key="scale" if move.op == "noise" else "factor"),
        f"{what} the weights of the {where} layer",
        f"{move.op} {move.layer} {value:.3g}",
    )


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
            text = move_text(old, new, knob)
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
    return Candidate("+".join(keys), " and ".join(words), values, alpha, tuple(operations), changes=", ".join(numbers))


def hold_candidate(m: EpochMetrics, reason: str) -> Candidate:
    """The candidate that changes nothing."""
    return Candidate("hold", HOLD_PHRASE, current_values(m), m.alpha, (), reason, "no change")


def goal_candidates(
    m: EpochMetrics, goal: str, reason: str, evidence: bool = False, moves: tuple[tuple[str, int], ...] | None = None
) -> list[Candidate]:
    """One candidate per move of ``goal`` (or of ``moves``, the goal's moves an instruction left free) that the
    task has and can still make (within :func:`evidence_bounds` when the evidence, not the user, asks)."""
    names = {*m.task.knob_names(), ALPHA}
    found = []
    for name, direction in goal_moves(goal, m.task) if moves is None else moves:
        if name in names and (c := apply_moves(m, (Move(name, direction),), evidence)) is not None:
            found.append(dataclasses.replace(c, reason=reason))
    return found


def rollback_candidate(m: EpochMetrics, reason: str, moves: tuple[Move, ...] = (), evidence: bool = False) -> Candidate:
    """Return to the best epoch so far (``EpochMetrics.best``), then make ``moves`` (:func:`apply_moves`; none, or
    none possible: the values this epoch used). Its key is ``rollback`` plus the moves' keys."""
    moved = apply_moves(m, moves, evidence) if moves else None
    best = m.best
    where = f"epoch {best.epoch}" if best is not None else "the best epoch"
    text = "go back to the weights of the best epoch" + (f" and {moved.text}" if moved else "")
    return Candidate(
        "+".join(["rollback", *([moved.key] if moved else [])]), text,
        moved.values if moved else current_values(m), moved.alpha if moved else m.alpha,
        moved.weight_changes if moved else (), reason,
        ", ".join([f"rollback to {where}", *([moved.changes] if moved else [])]), rollback=True,
    )  # fmt: skip


def collapse_candidates(m: EpochMetrics, signal: Signal) -> list[Candidate]:
    """After a collapse: go back to the best epoch with the learning rate halved, or cut to a third (the heuristic's
    rule takes the first); without a learning-rate knob, go back alone."""
    knob = learning_rate_knob(m.task)
    if knob is None:
        return [rollback_candidate(m, signal.reason)]
    halved = rollback_candidate(m, signal.reason, (Move(knob.name, -1, factor=0.5),), evidence=True)
    third = rollback_candidate(m, signal.reason, (Move(knob.name, -1, factor=1 / 3),), evidence=True)
    return [halved] + ([dataclasses.replace(third, key=third.key + ":third")] if third.values != halved.values else [])


SIGNAL_GOALS = {"diverging": "stability", "plateau": "escape the plateau", "overfitting": "less overfitting"}


def evidence_candidates(m: EpochMetrics, signal: Signal) -> list[Candidate]:
    """Candidates the evidence supports: a diverging run -> lower the learning rate (by the knob's step, or to a third),
    lower alpha, tighten a clip range; a plateau -> halve the learning rate or cut it to a third; a widening gap
    -> a regulariser up or the learning rate down; anything else (steady gains, no clear trend, a change still
    settling, the first epoch) -> hold; a collapse -> go back to the best epoch (:func:`collapse_candidates`)."""
    if signal.kind == "collapsed":
        return collapse_candidates(m, signal)
    if signal.kind not in SIGNAL_GOALS:
        return [hold_candidate(m, signal.reason)]
    found = goal_candidates(m, SIGNAL_GOALS[signal.kind], signal.reason, evidence=True)
    learning_rate = learning_rate_knob(m.task)
    if signal.kind in ("diverging", "plateau") and learning_rate is not None:
        third = apply_moves(m, (Move(learning_rate.name, -1, factor=1 / 3),), evidence=True)
        if third is not None and third.values != (found[0].values if found else None):
            found.append(dataclasses.replace(third, key=third.key + ":third", reason=signal.reason))
    return found or [hold_candidate(m, f"{signal.reason}, but every knob that could answer it is at its limit")]


def asked_changes(intent: Intent) -> set[str]:
    """The candidate key parts (``learning_rate:down``, ``scale:fc.3.weight``) that ``intent``'s own moves and goal
    moves ask for; a target asks for its knob in either direction (which one depends on the value now)."""
    asked: set[str] = set()
    for move in intent.moves:
        if move.op is not None:
            asked.add(f"{move.op}:{move.layer}")
        elif move.target is not None:
            asked |= {f"{move.knob}:up", f"{move.knob}:down"}
        elif move.direction:
            asked.add(f"{move.knob}:{'up' if move.direction > 0 else 'down'}")
    asked |= {f"{name}:{'up' if direction > 0 else 'down'}" for name, direction in intent.goal_moves}
    return asked | ({"rollback"} if intent.rollback else set())


def from_reading(candidate: Candidate, reading: Reading) -> bool:
    """Whether ``candidate`` is what the confident ``reading`` asked: a hold for "change nothing" (or only kept
    knobs), else every change of it one of :func:`asked_changes`. A reading not understood asks nothing."""
    intent = reading.intent
    if not reading.understood:
        return False
    if candidate.key == "hold":
        return intent.kind == "hold" or (
            intent.kind == "explicit" and all(m.direction == 0 and m.target is None and m.op is None for m in intent.moves)
        )  # fmt: skip
    asked = asked_changes(intent)
    return all(":".join(part.split(":")[:2]) in asked for part in candidate.key.split("+"))


def justified(plan: Plan, reading: Reading) -> Plan:
    """``plan`` with each candidate of an instruction's plan that the reading asked for marked ``asked`` (the
    evidence's candidates never are: the evidence chose them), and every other move of an instruction's plan given the evidence's reason instead of the user's words: a move the reader did not derive
    from the instruction is never justified as the user's request."""
    candidates = []
    for c in plan.candidates:
        if plan.source == "instruction" and from_reading(c, reading):
            candidates.append(dataclasses.replace(c, asked=True))
        elif plan.source == "instruction" and c.key != "hold":
            candidates.append(dataclasses.replace(c, reason=plan.signal.reason))
        else:
            candidates.append(c)
    return dataclasses.replace(plan, candidates=tuple(candidates))


def plan_decision(m: EpochMetrics) -> Plan:
    """The :class:`Plan` for the decision after ``m`` (see :func:`instruction_plan`), each candidate marked
    ``asked`` or given the evidence's reason (:func:`justified`)."""
    reading = read(m.instruction.text if m.instruction else None, m.task, weight_layers(m))
    return justified(instruction_plan(m, reading.intent if reading.understood else Intent("unread")), reading)


def instruction_plan(m: EpochMetrics, intent: Intent) -> Plan:
    """The instruction's candidates at the first decision it shapes (or at every one when it repeats or holds),
    else the evidence's candidates minus those that move against the instruction in force. An instruction not
    read with confidence (``agents.expert.reading``) is not acted on: the evidence decides, as without one.
    Always at least one candidate."""
    signal = read_signal(m)
    quoted = f"the user asked: {m.instruction.text[:120]!r}" if m.instruction else ""
    acting = intent.repeat or m.instruction_first_decision
    if intent.rollback and m.instruction_first_decision:  # once, with the moves asked beside it
        moves = intent.moves or tuple(Move(name, d) for name, d in intent.goal_moves[:1])
        return Plan(intent, signal, (rollback_candidate(m, quoted, moves),), "instruction")
    if intent.kind == "hold":
        return Plan(intent, signal, (hold_candidate(m, quoted),), "instruction")
    if intent.kind == "explicit" and acting:
        c = apply_moves(m, intent.moves)
        if c is None:
            kept = all(move.direction == 0 and move.target is None for move in intent.moves)
            why = "it asks to keep these values" if kept else "every knob it names is already at its bound"
            return Plan(intent, signal, (hold_candidate(m, f"{quoted}; {why}"),), "instruction")
        return Plan(intent, signal, (dataclasses.replace(c, reason=quoted),), "instruction")
    if intent.kind == "goal" and acting:
        found = goal_candidates(m, intent.goal or "", f"{quoted} ({intent.goal})", moves=intent.goal_moves)
        if found:
            return Plan(intent, signal, tuple(found), "instruction")
    found = [c for c in evidence_candidates(m, signal) if not moves_against_instruction(c, m, intent)]
    return Plan(
        intent,
        signal,
        tuple(found or [hold_candidate(m, f"{signal.reason}; the instruction in force rules out the rest")]),
        "evidence",
    )
