"""An instruction read once: what it asks (:class:`~agents.expert.instructions.Intent`), how sure the readers are,
which reader said so, and the sentence that says it back to the user.

Two readers, which must agree (measured side by side on the development half of ``bench/cases``; README):

* the grammar (``agents.expert.instructions``): knob names, directions, negation, sizes, code notation, goals and
  "change nothing", from word lists in eight languages;
* a multilingual sentence embedding (``agents.expert.embedding``): which knob a clause is about when the grammar
  knows no name in it, and "change nothing" or a goal when the grammar reads nothing.

A grammar reading stands unless the embedding is sure of something else; an embedding reading stands when its
margin is large enough; a knob without a direction, a misspelling the embedding does not confirm, or readers that
disagree are "not understood". Only a reading made with confidence is acted on: one not understood changes
nothing — the decision is taken on the evidence alone, as without an instruction, and the user is told at once
("not understood: ..."). Guessing would be worse than doing nothing: a misreading turned into a move goes against
the user half the time.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from agents.expert import embedding
from agents.expert.embedding import HOLD, Vote, knob_label
from agents.expert.embedding import vote as embedding_vote
from agents.expert.instructions import ALPHA, Intent, Move, goal_moves, normalized, read_instruction
from agents.expert.lexicon import asks_rollback
from bus.messages import TaskSpec

CONFIDENT = 0.5  # a reading below this confidence is "not understood" and constrains nothing
GRAMMAR, EMBEDDING = "grammar", "embedding"
# A task's weight layers are known only once its model is built; before that (``run.py explain``, the reply to
# ``run.py say``), the positions the reader understands stand for them.
POSITION_LAYERS = ["first layer", "last layer"]


@dataclass(frozen=True)
class Reading:
    """What the reader made of one instruction ``text``: its ``intent``, a ``confidence`` in [0, 1], and the
    ``reader`` that produced it."""

    text: str | None
    intent: Intent
    confidence: float
    reader: str

    @property
    def understood(self) -> bool:
        """Whether the reading is confident enough to act on (:data:`CONFIDENT`)."""
        return self.intent.kind != "none" and self.confidence >= CONFIDENT

    def said_back(self, spec: TaskSpec) -> str:
        """The reading as the user is told it, one line beginning ``read as:`` or ``not understood:``, e.g.
        ``read as: learning_rate × 0.5 at the next decision, then kept``."""
        intent = self.intent
        if intent.kind == "none":
            return "no instruction: the evidence decides"
        if not self.understood:
            example = spec.hyperparameters[0].prose() if spec.hyperparameters else "the learning rate"
            return f"not understood: nothing will change because of it; e.g. 'lower {example}'"
        when = "at every decision" if intent.repeat else "at the next decision, then kept"
        back = [ROLLBACK_WORDS] if intent.rollback else []
        if intent.kind == "hold":
            return "read as: change nothing, at every decision"
        if intent.kind == "goal":
            moves = " or ".join(f"{'raise' if d > 0 else 'lower'} {name}" for name, d in intent.goal_moves)
            kept = "".join(f", {move_words(move, spec)}" for move in intent.moves)
            first = f"{back[0]}, then " if back else ""
            return f"read as: {first}{intent.goal} ({moves or 'no knob of this task serves it'}{kept}) {when}"
        if not intent.moves:  # only a rollback: there is nothing to keep afterwards
            when = "at the next decision"
        return f"read as: {', '.join(back + [move_words(move, spec) for move in intent.moves])} {when}"


ROLLBACK_WORDS = "roll back to the best epoch so far"


def with_rollback(intent: Intent, text: str | None) -> Intent:
    """``intent`` with ``rollback`` set when ``text`` asks to return to the best epoch
    (``agents.expert.lexicon.asks_rollback``): on its own ("go back to the best epoch") an explicit intent with no
    moves; beside moves or a goal ("roll back and halve the learning rate"), those too. "Change nothing" wins."""
    if text is None or intent.kind == "hold" or not asks_rollback(normalized(text)):
        return intent
    if intent.kind in ("unread", "none"):
        return Intent("explicit", rollback=True)
    return dataclasses.replace(intent, rollback=True)


def move_words(move: Move, spec: TaskSpec | None = None) -> str:
    """One move in the said-back form: ``learning_rate × 0.5``, ``dropout to 0.35``, ``dropout + 0.1``,
    ``learning_rate up one step``, ``dropout kept``, ``noise on fc.3.weight``; a target beyond the knob's hard
    bounds in ``spec`` says where it stops (``learning_rate to 100 (stops at its bound 0.1)``)."""
    if move.op is not None:
        return f"{move.op} {'down' if move.direction < 0 else 'up' if move.op == 'scale' else 'on'} {move.layer}"
    name = move.knob if move.knob is not None else ALPHA
    if move.target is not None:
        knob = spec.knob(name) if spec is not None and name in spec.knob_names() else None
        low, high = (knob.low, knob.high) if knob is not None else (0.0, 1.0)
        bound = min(max(move.target, low), high)
        return f"{name} to {move.target:g}" + (f" (stops at its bound {bound:g})" if bound != move.target else "")
    if move.direction == 0:
        return f"{name} kept"
    if move.factor is not None:
        return f"{name} × {move.factor:.3g}"
    if move.amount is not None:
        return f"{name} {'+' if move.direction > 0 else '-'} {move.amount:g}"
    return f"{name} {'up' if move.direction > 0 else 'down'} one step"


# How far the embedding's best label must lead the next one (cosine units) for it to count on its own; tuned on
# the development half of bench/cases (never on the test half). A margin of twice the threshold is confidence 1.
HOLD_MARGIN, GOAL_MARGIN, KNOB_MARGIN = 0.01, 0.02, 0.015
# A clause is about a knob only if that knob leads every goal and "change nothing" by this much (measured on the
# development half: below it, chatter such as "lass ihm mehr Freiheit" was named a knob).
NAMER_LEAD = 0.005
# Direction by the embedding, only where the grammar knows no direction word: measured 12 of 12 right at a lead of
# 0.02 or more on verbs in eight languages, 24 of 29 without a threshold (antonyms embed close).
DIRECTION_MARGIN = 0.025
# The embedding contradicts the grammar only when it is this sure of something else.
DISSENT_MARGIN = 0.05


def confidence(margin: float, threshold: float) -> float:
    """A margin as a confidence in [0, 1]: :data:`CONFIDENT` exactly at ``threshold``."""
    return max(0.0, min(1.0, CONFIDENT * margin / threshold))


def combined(text: str, grammar: Intent, vote: Vote | None, spec: TaskSpec) -> Reading:
    """The reading two readers agree on. The grammar's reading stands (a knob it knows only by a misspelling must
    be the embedding's knob too; moves it reads must not meet a sure "change nothing"); what the grammar cannot
    read the embedding reads when its margin is large enough: "change nothing" or a goal. A knob without a
    direction is not understood: the embedding cannot tell "raise" from "lower"."""
    reader = f"{GRAMMAR}+{EMBEDDING}" if grammar.named else GRAMMAR
    if grammar.kind not in ("unread", "none"):
        if vote is None:
            return Reading(text, grammar, 0.0 if grammar.misspelt else 1.0, reader)
        if grammar.misspelt and vote.label not in {knob_label(name) for name in grammar.misspelt}:
            return Reading(text, grammar, 0.0, f"{reader}: the misspelt name is not confirmed")
        if vote.label == HOLD and vote.margin >= DISSENT_MARGIN and any(m.direction or m.target for m in grammar.moves):
            return Reading(text, grammar, 0.0, f"{reader}: the embedding reads 'change nothing'")
        return Reading(text, grammar, 1.0, reader)
    if vote is None:
        return Reading(text, grammar, 0.0, GRAMMAR)
    if vote.label == HOLD:
        return Reading(text, Intent("hold", repeat=True), confidence(vote.margin, HOLD_MARGIN), EMBEDDING)
    if vote.label.startswith("goal:"):
        goal = vote.label.removeprefix("goal:")
        intent = Intent("goal", goal=goal, goal_moves=goal_moves(goal, spec))
        return Reading(text, intent, confidence(vote.margin, GOAL_MARGIN), EMBEDDING)
    return Reading(text, grammar, 0.0, f"{EMBEDDING}: {vote.label.removeprefix('knob:')}, no direction")


def embedding_namer(spec: TaskSpec):
    """A namer for the grammar: the knob the embedding reads a clause to be about — its best label must be a
    knob, not a goal or "change nothing" — when it leads the other knobs (``moves``: the clause asks a move) or
    every other label (it only asks to keep something) by :data:`KNOB_MARGIN`; else None."""

    def namer(clause: str, moves: bool = True) -> str | None:
        overall = embedding_vote(clause, spec)
        if overall is None or not overall.label.startswith("knob:") or overall.margin < NAMER_LEAD:
            return None  # about a goal, "change nothing", or nothing in particular
        vote = embedding_vote(clause, spec, knobs_only=True) if moves else overall
        if vote is None or vote.margin < KNOB_MARGIN:
            return None
        return vote.label.removeprefix("knob:")

    return namer


def warm_up() -> None:
    """Load the embedding reader and its direction prototypes now (about 0.2 s), so a process's first reading
    does not pay for it; nothing when the reader is unavailable."""
    if embedding.available():
        embedding.direction_table()


def embedding_direction(clause: str) -> int:
    """A directioner for the grammar: +1 or -1 when the embedding reads the masked clause as "raise" or "lower"
    with a lead of :data:`DIRECTION_MARGIN`, else 0."""
    direction, lead = embedding.direction(clause)
    return direction if lead >= DIRECTION_MARGIN else 0


@functools.lru_cache(maxsize=256)
def cached_read(text: str | None, spec_json: str, layers: tuple[str, ...]) -> Reading:
    spec = TaskSpec.model_validate_json(spec_json)
    grammar = read_instruction(text, spec, list(layers), namer=embedding_namer(spec), directioner=embedding_direction)
    grammar = with_rollback(grammar, text)
    if grammar.kind == "none":
        return Reading(text, grammar, 0.0, GRAMMAR)
    return combined(text, grammar, embedding_vote(text, spec), spec)


def read(text: str | None, spec: TaskSpec, layers: list[str] | None = None) -> Reading:
    """The :class:`Reading` of instruction ``text`` for the task ``spec`` (whose weight layers are ``layers``, first
    to last; :data:`POSITION_LAYERS` when not known), from the grammar and the embedding together
    (:func:`combined`); cached, so the several readers of one decision cost one reading. Never raises: what
    cannot be read is not understood."""
    return cached_read(text, spec.model_dump_json(), tuple(POSITION_LAYERS if layers is None else layers))
