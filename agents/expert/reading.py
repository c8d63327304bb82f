"""An instruction read once: what it asks (:class:`~agents.expert.instructions.Intent`), how sure the reader is,
which reader said so, and the sentence that says it back to the user.

Only a reading made with confidence is acted on. An instruction the reader does not understand changes nothing:
the decision is taken on the evidence alone, as without an instruction, and the user is told so at once
("not understood: ..."). Guessing would be worse than doing nothing: a misreading turned into a move goes against
the user half the time.

The one reader today is the lexicon (``agents.expert.instructions``): what it reads — named knobs with a direction
or a target, a goal, "change nothing" — it reads with confidence 1; anything else with confidence 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.expert.instructions import ALPHA, Intent, Move, read_instruction
from bus.messages import TaskSpec

CONFIDENT = 0.5  # a reading below this confidence is "not understood" and constrains nothing
LEXICON = "lexicon"
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
        if intent.kind == "hold":
            return "read as: change nothing, at every decision"
        if intent.kind == "goal":
            moves = " or ".join(f"{'raise' if d > 0 else 'lower'} {name}" for name, d in intent.goal_moves)
            return f"read as: {intent.goal} ({moves or 'no knob of this task serves it'}) {when}"
        return f"read as: {', '.join(move_words(move) for move in intent.moves)} {when}"


def move_words(move: Move) -> str:
    """One move in the said-back form: ``learning_rate × 0.5``, ``dropout to 0.35``, ``dropout + 0.1``,
    ``learning_rate up one step``, ``dropout kept``, ``noise on fc.3.weight``."""
    if move.op is not None:
        return f"{move.op} {'down' if move.direction < 0 else 'up' if move.op == 'scale' else 'on'} {move.layer}"
    name = move.knob if move.knob is not None else ALPHA
    if move.target is not None:
        return f"{name} to {move.target:g}"
    if move.direction == 0:
        return f"{name} kept"
    if move.factor is not None:
        return f"{name} × {move.factor:.3g}"
    if move.amount is not None:
        return f"{name} {'+' if move.direction > 0 else '-'} {move.amount:g}"
    return f"{name} {'up' if move.direction > 0 else 'down'} one step"


def read(text: str | None, spec: TaskSpec, layers: list[str] | None = None) -> Reading:
    """The :class:`Reading` of instruction ``text`` for the task ``spec`` (whose weight layers are ``layers``, first
    to last; :data:`POSITION_LAYERS` when not known). Never raises: what cannot be read is not understood."""
    intent = read_instruction(text, spec, POSITION_LAYERS if layers is None else layers)
    confidence = 0.0 if intent.kind in ("unread", "none") else 1.0
    return Reading(text, intent, confidence, LEXICON)
