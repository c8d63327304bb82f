"""Reading a user's plain-language instruction into an :class:`Intent`: moves of named knobs (with a direction and
a size), a weight operation, a goal ("fight overfitting", "converge faster"), or "change nothing".

Why a lexicon and not a parser library: the vocabulary is the field's own (knob names, "halve", "overfitting")
and small; a general NLU model is exactly what is not available offline at this size, and the embedded 135M
model reads instructions poorly (``../shared/notes/small-model-guidance.md``). What the lexicon cannot read is
``unread`` and left to the model (``agents.expert.candidates``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from agents.proposals.parse import ALPHA
from agents.trends import step_digits
from bus.messages import Hyperparameter, TaskSpec

# How instructions name alpha, ReflectNet's own blend ratio. A task's knobs are named by their own name and the
# aliases the task declares (``Hyperparameter.vocabulary``): nothing here knows a task's knobs.
ALPHA_WORDS = ("alpha", "blend ratio", "blend")
DOWN_WORDS = (
    r"lower|lowering|reduce|reducing|decrease|decreasing|cut|cutting|halve|halving|half|drop|dropping|shrink|"
    r"shrinking|smaller|less|lessen|diminish|divide|slash|weaken|"
    r"turn down|bring down|scale down|dial down|tone down|go down|down|decay|anneal|shorter|softer|weaker|lighter|"
    r"slower|tiny|turn off|disable|remove|zero"
)
# "the learning rate is too high" asks for the opposite of its adjective: read before the plain words.
TOO_DOWN = r"too (?:high|large|big|much|strong|aggressive|fast)|excessive"
TOO_UP = r"too (?:low|small|little|weak|slow|timid)|not enough|insufficient"
UP_WORDS = (
    r"raise|increase|higher|bigger|larger|more|boost|bump|double|triple|grow|strengthen|turn up|scale up|"
    r"crank up|up|heavier|stronger|longer|greater|add|adding|raising|increasing|boosting|doubling|tripling|growing"
)
NEGATION = re.compile(r"\b(?:do not|don't|dont|never|not|no longer|stop|avoid|without)\b")
KEEP_WORDS = re.compile(r"\bkeep|\bleave|\bhold|\bsame|\bfix")
HOLD_PATTERN = re.compile(
    r"change nothing|don'?t change|do not change|no changes?|keep (?:every|all|the|it|things)|leave (?:every|all|it|"
    r"things|the)|hold (?:every|all|still|steady|it|the)|stay the course|freeze|as (?:it|they) (?:is|are)|unchanged|"
    r"don'?t touch|do not touch|hands off"
)
REPEAT_PATTERN = re.compile(
    r"\bevery\b|\beach\b|\bkeep (?:lowering|raising|reducing|increasing|cutting)|\bcontinu|\bagain and again"
)
NUMBER = r"(\d+(?:\.\d+)?(?:e-?\d+)?)"

# Goals: a pattern over the instruction; GOAL_MOVES says which moves (knob, direction) pursue each, in order of
# preference. The opposite moves contradict it.
GOALS: tuple[tuple[str, re.Pattern], ...] = (
    ("less underfitting", re.compile(r"underfit|under-fit|too much regulari|(?:less|reduce|lower|weaker|decrease) "
                                     r"(?:the )?regulari|regulari[sz]e less|not learning enough|too weak")),
    ("less overfitting", re.compile(r"overfit|over-fit|memori[sz]|generali[sz]|regulari|too well on (?:the )?train")),
    ("stability", re.compile(r"unstable|instabil|stab(?:le|ility|ilize|ilise)|jump|oscillat|diverg|spik|noisy|erratic|explod|"
                             r"bounc|fluctuat|careful|cautious|conservative|safe|gentle|calm|slow (?:it )?down|smaller steps")),
    ("speed", re.compile(r"faster|speed|quick|too slow|slowly|accelerat|aggressive|hurry|rapid")),
    ("exploration", re.compile(r"explor|more random")),
    ("exploitation", re.compile(r"exploit|less random|more greedy|greedier")),
    ("escape the plateau", re.compile(r"stuck|plateau|stall|not improving|stagnat|flat")),
)  # fmt: skip
# By knob family (``Hyperparameter.family``), or alpha: a family stands for each of the task's knobs of it, in the
# task's order.
GOAL_MOVES: dict[str, tuple[tuple[str, int], ...]] = {
    "less overfitting": (("regularization", 1), ("learning_rate", -1)),
    "less underfitting": (("regularization", -1), ("learning_rate", 1)),
    "stability": (("learning_rate", -1), ("clipping", -1), (ALPHA, -1)),
    "speed": (("learning_rate", 1),),
    "exploration": (("exploration", 1),),
    "exploitation": (("exploration", -1),),
    "escape the plateau": (("learning_rate", -1),),
}
WEIGHTS_PATTERN = re.compile(r"\bweights?\b(?! decay)|\blayers?\b")
LAYER_WORDS = {"last": -1, "final": -1, "output": -1, "top": -1, "first": 0, "input": 0, "bottom": 0}
SMALL_PATTERN = re.compile(r"a little|slightly|a bit|a touch|somewhat|gently|a tad|marginally|(?<!too )\bsmall\b")
SMALL_OP, DEFAULT_OP = 0.02, 0.03  # weight-operation sizes, as fractions of a layer's norm (at most 0.05)
SMALL_LOG_FACTOR = 1.5  # "lower the learning rate a little": divide by 1.5 rather than by the knob's step

IntentKind = Literal["explicit", "goal", "hold", "unread", "none"]


@dataclass(frozen=True)
class Move:
    """One change an instruction asks for: a knob (or ``alpha``) in a direction (+1 up, -1 down, 0 keep), by a
    ``factor`` (log-scale knobs), an ``amount`` (linear knobs) or to a ``target``; or a weight operation
    (``op`` and ``layer`` set, ``amount`` its size as a fraction of the layer's norm)."""

    knob: str | None
    direction: int
    factor: float | None = None
    amount: float | None = None
    target: float | None = None
    op: str | None = None
    layer: str | None = None


@dataclass(frozen=True)
class Intent:
    """What an instruction asks (:func:`read_instruction`). ``explicit``: named moves; ``goal``: a goal from
    :data:`GOALS`; ``hold``: change nothing; ``unread``: text this lexicon cannot read (the evidence decides);
    ``none``: no instruction. ``repeat``: the moves apply at every decision, not once."""

    kind: IntentKind
    moves: tuple[Move, ...] = ()
    goal: str | None = None
    repeat: bool = False
    goal_moves: tuple[tuple[str, int], ...] = ()  # a goal's moves on this task's knobs (:func:`goal_moves`)

    def words(self) -> str:
        """The intent in a few words, for records: ``explicit: learning_rate down``, ``goal: speed``."""
        if self.kind == "explicit":
            return "explicit: " + ", ".join(
                f"{m.knob} to {m.target:g}"
                if m.target is not None
                else f"{m.knob or m.op} {('down', 'keep', 'up')[m.direction + 1]}"
                for m in self.moves
            )
        return f"goal: {self.goal}" if self.kind == "goal" else self.kind


def knob_spans(clause: str, spec: TaskSpec) -> list[tuple[int, int, str]]:
    """Where ``clause`` names the task's knobs (and ``alpha``): (start, end, name), in order; a longer name wins
    over its parts ("weight decay" over "decay")."""
    named = [(knob.name, knob.vocabulary()) for knob in spec.hyperparameters] + [(ALPHA, ALPHA_WORDS)]
    phrases = sorted(((phrase, name) for name, words in named for phrase in words), key=lambda p: -len(p[0]))
    spans: list[tuple[int, int, str]] = []
    for phrase, name in phrases:
        for match in re.finditer(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", clause):
            if not any(a < match.end() and match.start() < b for a, b, _ in spans):
                spans.append((match.start(), match.end(), name))
    return sorted(spans)


def knob_mentions(clause: str, spec: TaskSpec) -> list[str]:
    """The knobs (and ``alpha``) ``clause`` names, in the order they appear, each once."""
    return list(dict.fromkeys(name for _, _, name in knob_spans(clause, spec)))


def blanked(clause: str, spans: list[tuple[int, int, str]]) -> str:
    """``clause`` with the knob names masked, so that a name's own words ("decay", "drop out") are not read as
    directions."""
    for start, end, _ in spans:
        clause = clause[:start] + "#" * (end - start) + clause[end:]
    return clause


def direction_word_positions(text: str) -> list[tuple[int, int]]:
    """(position, +1/-1) of every direction word in ``text``; "too high"/"not enough" phrases, when present,
    are the only ones read (they mean the opposite of their adjective)."""
    too = [(m.start(), -1) for m in re.finditer(TOO_DOWN, text)] + [(m.start(), 1) for m in re.finditer(TOO_UP, text)]
    if too:
        return sorted(too)
    return sorted(
        [(m.start(), -1) for m in re.finditer(rf"\b(?:{DOWN_WORDS})\b", text)]
        + [(m.start(), 1) for m in re.finditer(rf"\b(?:{UP_WORDS})\b", text)]
    )


def direction_at(position: int, text: str) -> tuple[int, bool]:
    """The direction asked for the knob named at ``position`` of the masked clause ``text``: the nearest
    direction word (0 when there is none), and whether a negation ("do not", "never") governs it."""
    words = direction_word_positions(text)
    if not words:
        return 0, False
    at, direction = min(words, key=lambda w: abs(w[0] - position))
    return direction, bool(NEGATION.search(text[max(0, at - 20) : at]))


def clause_direction(clause: str) -> int:
    """+1, -1 or 0: the direction asked in ``clause`` as a whole (its first direction word)."""
    words = direction_word_positions(clause)
    return words[0][1] if words else 0


def clause_magnitude(clause: str, knob: Hyperparameter | None, direction: int) -> dict:
    """The size of a move in ``clause``: ``target`` ("to 0.3"), ``factor`` ("halve", "by a factor of 3", "by
    20%", "a little") or ``amount`` ("by 0.1"); empty when the clause says none (the knob's step is used)."""
    if m := re.search(rf"(?:\bto|\bat|=)\s*{NUMBER}", clause):
        return {"target": float(m.group(1))}
    if re.search(r"\bturn off|\bdisable|\bremove|\bto zero|\bzero\b|\bno more\b", clause):
        return {"target": knob.low} if knob is not None else {"target": 0.0}
    if re.search(r"\bhalve|\bhalf\b|\bby half", clause):
        return {"factor": 0.5}
    if re.search(r"\bdouble|\btwice", clause):
        return {"factor": 2.0}
    if re.search(r"\btriple|\bthree ?times", clause):
        return {"factor": 3.0}
    if m := re.search(rf"factor of\s*{NUMBER}|\b{NUMBER}\s*(?:x|times)\b", clause):
        n = float(m.group(1) or m.group(2))
        if n <= 0:
            return {}
        return {"factor": n if direction >= 0 else 1 / n}  # "lr 2x", without a verb: multiply
    if m := re.search(rf"\badd\s*{NUMBER}|\bplus\s*{NUMBER}", clause):
        return {"amount": float(m.group(1) or m.group(2))}
    if m := re.search(rf"by {NUMBER}\s*(?:%|percent)", clause):
        return {"factor": 1 + direction * float(m.group(1)) / 100}
    if m := re.search(rf"by {NUMBER}", clause):
        value = float(m.group(1))
        if knob is not None and knob.scale == "log":  # "by 3": a factor; "by 1e-4": an amount; "by 0.5": unclear
            return (
                {"factor": value if direction > 0 else 1 / value}
                if value > 1
                else {"amount": value}
                if value < knob.default
                else {}
            )
        return {"amount": value}
    if SMALL_PATTERN.search(clause):
        return {"small": True}
    return {}


def sized(magnitude: dict, knob: Hyperparameter | None, direction: int) -> dict:
    """:func:`clause_magnitude`'s answer as :class:`Move` fields: "a little" is a factor of
    :data:`SMALL_LOG_FACTOR` for a log-scale knob, half a step for a linear one, 0.1 for alpha."""
    if not magnitude.pop("small", False):
        return magnitude
    if knob is None:
        return {"amount": 0.1}
    return {"factor": SMALL_LOG_FACTOR**direction} if knob.scale == "log" else {"amount": knob.step / 2}


def split_clauses(text: str) -> list[str]:
    return [c.strip() for c in re.split(r"[;,!?]|\.(?=\s|$)|\band\b|\bthen\b|\bbut\b|\balso\b", text) if c.strip()]


def weight_move(clause: str, layers: list[str], direction: int) -> Move | None:
    """A weight operation asked for in ``clause`` ("shrink the last layer's weights a little", "add noise to
    the weights"), on the layer it names (by position word or name; the last layer otherwise)."""
    if not layers or not WEIGHTS_PATTERN.search(clause):
        return None
    layer = next((name for name in layers if name.rsplit(".", 1)[0] in clause), None)
    if layer is None:
        position = next((i for word, i in LAYER_WORDS.items() if re.search(rf"\b{word}\b", clause)), -1)
        layer = layers[position]
    size = SMALL_OP if SMALL_PATTERN.search(clause) else DEFAULT_OP
    if re.search(r"nois|perturb|jitter|shake", clause):
        return Move(None, 1, amount=size, op="noise", layer=layer)
    if direction == 0:
        return None
    return Move(None, direction, amount=size, op="scale", layer=layer)


def read_instruction(text: str | None, spec: TaskSpec, layers: list[str] | None = None) -> Intent:
    """The :class:`Intent` of an instruction ``text`` for the task ``spec`` whose weight layers are ``layers``
    (names of weight tensors, first to last). Each knob named takes the direction word nearest to it; a negated
    one ("do not lower the learning rate") and "keep X" are keeps (X must not move); a knob named without a
    direction takes the previous clause's. Never raises: what it cannot read is ``unread``."""
    if text is None or not text.strip():
        return Intent("none")
    lowered = " ".join(text.lower().split())
    repeat = bool(REPEAT_PATTERN.search(lowered))
    moves: list[Move] = []
    inherited: tuple[int, dict] | None = None  # "halve the learning rate and dropout": dropout is halved too
    for clause in split_clauses(lowered):
        spans = knob_spans(clause, spec)
        masked = blanked(clause, spans)
        for start, _, name in spans:
            if any(move.knob == name for move in moves):
                continue
            knob = spec.knob(name) if name != ALPHA else None
            direction, negated = direction_at(start, masked)
            magnitude = clause_magnitude(masked, knob, direction)
            if direction == 0 and magnitude.get("factor", 1.0) != 1.0:
                direction = 1 if magnitude["factor"] > 1 else -1
            keep = negated or (direction == 0 and "target" not in magnitude and bool(KEEP_WORDS.search(masked)))
            if direction == 0 and not keep and not magnitude and inherited is not None:
                direction, magnitude = inherited[0], dict(inherited[1])
            if keep:
                moves.append(Move(name, 0))
            elif "target" in magnitude or direction != 0:
                inherited = (direction, dict(magnitude))
                moves.append(Move(name, direction, **sized(magnitude, knob, direction)))
        if not spans and (op := weight_move(masked, layers or [], clause_direction(masked))) is not None:
            moves.append(op)
    if moves:
        return Intent("explicit", tuple(moves), repeat=repeat)
    if HOLD_PATTERN.search(lowered):
        return Intent("hold", repeat=True)
    for goal, pattern in GOALS:
        if pattern.search(lowered):
            return Intent("goal", goal=goal, repeat=repeat, goal_moves=goal_moves(goal, spec))
    return Intent("unread")


def target_direction(move: Move, values: dict[str, float], alpha: float) -> int:
    """The move's direction; for a move to a target, where the target lies from the current value."""
    if move.target is None or move.knob is None:
        return move.direction
    current = alpha if move.knob == ALPHA else values.get(move.knob, move.target)
    return (move.target > current) - (move.target < current)


def asked_directions(intent: Intent, values: dict[str, float] | None = None, alpha: float = 0.0) -> dict[str, int]:
    """Knob -> the direction the intent asks for (0: keep), targets resolved against ``values``; a goal's
    preferred moves."""
    if intent.kind == "explicit":
        return {
            move.knob: target_direction(move, values or {}, alpha) for move in intent.moves if move.knob is not None
        }
    if intent.kind == "goal":
        return dict(intent.goal_moves)
    return {}


def moved_value(knob: Hyperparameter, current: float, move: Move, bounds: tuple[float, float] | None = None) -> float:
    """Where ``move`` takes ``knob`` from ``current``: its target, factor or amount, else one step; inside
    ``bounds`` (default: the hard bounds; the validator then applies the trust region and records a clamp)."""
    if move.target is not None:
        value = move.target
    elif knob.scale == "log":
        factor = move.factor if move.factor is not None else knob.step**move.direction
        value = current * factor if move.amount is None else current + move.direction * move.amount
    else:
        amount = move.amount if move.amount is not None else knob.step
        value = current * move.factor if move.factor is not None else current + move.direction * amount
        value = round(value, step_digits(knob))
    low, high = bounds or (knob.low, knob.high)
    return min(max(value, low), high)


def goal_moves(goal: str, spec: TaskSpec) -> tuple[tuple[str, int], ...]:
    """The moves (knob or ``alpha``, direction) that pursue ``goal`` on the task ``spec``, in order of preference:
    :data:`GOAL_MOVES` with each family replaced by the task's knobs of that family, in the task's order."""
    moves: list[tuple[str, int]] = []
    for family, direction in GOAL_MOVES.get(goal, ()):
        if family == ALPHA:
            moves.append((ALPHA, direction))
        else:
            moves += [(k.name, direction) for k in spec.hyperparameters if k.family == family]
    return tuple(moves)
