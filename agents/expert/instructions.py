"""The grammar reader of instructions: an instruction read into an :class:`Intent` — moves of named knobs (with a
direction and a size), a weight operation, a goal ("fight overfitting", "converge faster"), or "change nothing".

Clause by clause, each knob named (by the task's vocabulary, a family word, a misspelling within rapidfuzz's
reach, or — for a clause that names none the grammar knows, "baja la tasa de aprendizaje" — by the embedding
reader's ``namer``) takes the nearest direction word (``agents.expert.lexicon``), the size the clause gives
(``agents.expert.sizes``), or is kept when negated or excluded. Why a grammar at all beside the embedding:
direction, negation, numbers and code notation are what sentence embeddings read poorly
(``../shared/notes/instruction-readers.md``); ``agents.expert.reading`` combines the two and decides what is
understood.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from agents.expert.knob_names import FUZZY_SCORE, blanked, knob_spans
from agents.expert.lexicon import (
    DOWN_PATTERN,
    GOALS,
    HOLD_PATTERN,
    KEEP_PATTERN,
    NEGATION,
    OFF,
    REPEAT_PATTERN,
    SMALL_PATTERN,
    STATE_DOWN,
    STATE_UP,
    UP_PATTERN,
    gap_goal,
)
from agents.expert.sizes import clause_magnitude, code_magnitude, sized
from agents.proposals.parse import ALPHA
from agents.trends import step_digits
from bus.messages import Hyperparameter, TaskSpec

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
DIRECTION_VERBS = {"increase": 1, "raise": 1, "double": 1, "decrease": -1, "reduce": -1, "lower": -1, "halve": -1}
WEIGHTS_PATTERN = re.compile(
    r"\bweights?\b(?! decay)|\blayers?\b|gewicht|\bpoids\b|\bpesos?\b|\bpesi\b|权重(?!衰减)|重み(?!減衰)|\bschicht|\bcouche|\bcapa\b|"
    r"\bcamada|\bstrato|层|層"
)
LAYER_WORDS = {
    "last": -1, "final": -1, "output": -1, "top": -1, "first": 0, "input": 0, "bottom": 0, "letzte": -1, "dernière": -1,
    "última": -1, "ultimo": -1, "erste": 0, "première": 0, "primera": 0, "primeira": 0,
}  # fmt: skip
SMALL_OP, DEFAULT_OP = 0.02, 0.03  # weight-operation sizes, as fractions of a layer's norm (at most 0.05)
# A knob named after these is excluded, not asked for: "raise dropout instead of the learning rate".
EXCLUDED_BEFORE = re.compile(
    r"(?:anything but|everything but|everything except|all but|instead of|rather than|not|except|apart from|other than|"
    r"but not|nor|sans|sin|ohne|sem|senza)\W*(?:the\W*)?$"
)

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
    ``none``: no instruction. ``repeat``: the moves apply at every decision, not once. ``rollback``: return to the
    best epoch so far first, once (``agents.expert.reading.with_rollback``)."""

    kind: IntentKind
    moves: tuple[Move, ...] = ()
    goal: str | None = None
    repeat: bool = False
    goal_moves: tuple[tuple[str, int], ...] = ()  # a goal's moves on this task's knobs (:func:`goal_moves`)
    misspelt: tuple[str, ...] = ()  # knobs named only by a misspelling (another reader must agree)
    named: tuple[str, ...] = ()  # knobs the embedding named for a clause the grammar found no name in
    rollback: bool = False

    def words(self) -> str:
        """The intent in a few words, for records: ``explicit: learning_rate down``, ``goal: speed``."""
        if self.kind == "explicit":
            return "explicit: " + ", ".join(["rollback"] * self.rollback + [
                f"{m.knob} to {m.target:g}"
                if m.target is not None
                else f"{m.knob or m.op} {('down', 'keep', 'up')[m.direction + 1]}"
                for m in self.moves
            ])  # fmt: skip
        return f"goal: {self.goal}" if self.kind == "goal" else self.kind


def direction_word_positions(text: str) -> list[tuple[int, int]]:
    """(position, +1/-1) of every direction word in ``text``; state phrases ("too high", "seems low", "not
    enough"), when present, are the only ones read (they ask for the opposite of their adjective)."""
    states = [(m.start(), -1) for m in STATE_DOWN.finditer(text)] + [(m.start(), 1) for m in STATE_UP.finditer(text)]
    if states:
        return sorted(states)
    words = [(m.start(), -1) for m in DOWN_PATTERN.finditer(text)] + [(m.start(), 1) for m in UP_PATTERN.finditer(text)]
    return sorted(words) or misspelt_directions(text)


def misspelt_directions(text: str) -> list[tuple[int, int]]:
    """(position, +1/-1) of misspelt direction verbs ("incrase", "decraese", "lowr"): words of 5+ letters within
    :data:`FUZZY_SCORE` of one of :data:`DIRECTION_VERBS` (rapidfuzz ratio)."""
    from rapidfuzz import fuzz, process

    found = []
    for word in re.finditer(r"[a-z]{5,}", text):
        match = process.extractOne(word.group(0), list(DIRECTION_VERBS), scorer=fuzz.ratio, score_cutoff=FUZZY_SCORE)
        if match is not None:
            found.append((word.start(), DIRECTION_VERBS[match[0]]))
    return found


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


def split_clauses(text: str) -> list[str]:
    """``text`` cut where a new request may begin: punctuation (not a decimal point or code), "and", "then",
    "but", "also", and their equivalents in the other languages read."""
    pieces = re.split(
        r"[;!?？！。；、]|,(?!\d)|\.(?=\s|$)|\n|\s[-–—]+\s|\b(?:and|then|but|also|plus|y|et|und|e|mais|pero|aber|però|ma|mas|sondern)\b|"
        r"(?=\b(?:without|sans|sin|ohne|sem|senza)\b)|但|并且|然后|而且|でも|そして",
        text,
    )
    return [c.strip() for c in pieces if c and c.strip()]


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
    if re.search(r"nois|perturb|jitter|shake|rausch|bruit|ruido|ruído|rumore|噪声|ノイズ", clause):
        return Move(None, 1, amount=size, op="noise", layer=layer)
    if direction == 0:
        return None
    return Move(None, direction, amount=size, op="scale", layer=layer)


def knob_move(clause: str, masked: str, start: int, end: int, knob: Hyperparameter | None) -> tuple[int, dict, bool]:
    """(direction, magnitude, keep) asked for the knob named at ``clause[start:end]``: code notation right after
    the name wins; then the nearest direction word and the clause's size; a negated one, an excluded one
    ("instead of X") or one with a keep word and no direction is a keep."""
    if EXCLUDED_BEFORE.search(masked[max(0, start - 16) : start]):
        return 0, {}, True
    magnitude = code_magnitude(masked[end : end + 24])
    direction, negated = direction_at(start, masked)
    if not magnitude:
        magnitude = clause_magnitude(masked, knob, direction)
    if "direction" in magnitude:
        direction = magnitude["direction"]
    elif magnitude.get("factor", 1.0) != 1.0:
        direction = 1 if magnitude["factor"] > 1 else -1
    if negated and not OFF.search(masked):  # "no more dropout" is off, not a keep
        return 0, {}, True
    if direction == 0 and "target" not in magnitude and (NEGATION.search(masked) or KEEP_PATTERN.search(masked)):
        return 0, {}, True
    return direction, magnitude, False


Namer = Callable[[str, bool], "str | None"]  # (clause, whether it asks a move) -> knob name or None
Directioner = Callable[[str], int]  # a clause with its knob masked -> +1, -1, or 0 (cannot tell)
# A clause about a metric ("validation rmse crept up from 55 to 62") describes, it does not ask a knob to move.
METRIC_WORDS = re.compile(
    r"\b(?:loss\w*|rmse|mse|mae|acc\w*|returns?|rewards?|scores?|errors?|val|validation|train\w*|gradients?|eval\w*|"
    r"pérdida|perte|verlust|perda|perdita|recompensa|récompense|belohnung|ricompensa)\b|损失|損失|精度|准确率|奖励|報酬|リターン"
)
PRONOUN = re.compile(r"(?<!\w)(?:it|them|that one|this one|lo|la|le|les|es|ihn|sie|o|a)(?!\w)")


def clause_spans(
    clause: str, spec: TaskSpec, namer: Namer | None
) -> tuple[list[tuple[int, int, str]], list[str], list[str]]:
    """The knobs ``clause`` names: (spans, misspelt, named by ``namer``). A clause that names none but asks a
    direction or a size ("baja la tasa de aprendizaje", "学習率を下げて") asks ``namer`` (the embedding) which knob
    it is about; the whole clause then stands for that knob's name."""
    spans = knob_spans(clause, spec)
    exact = {name for _, _, name in knob_spans(clause, spec, fuzzy=False)}
    misspelt = [name for _, _, name in spans if name not in exact]
    moves = bool(direction_word_positions(clause) or clause_magnitude(clause, None, 0))
    bare_name = len(clause) <= 16 and not HOLD_PATTERN.search(clause)  # "ドロップアウト", "la tasa de aprendizaje"
    if spans or namer is None or WEIGHTS_PATTERN.search(clause) or METRIC_WORDS.search(clause):
        return spans, misspelt, []  # (a weight operation, or numbers about a metric, name no knob)
    if not (moves or bare_name or (KEEP_PATTERN.search(clause) and not HOLD_PATTERN.search(clause))):
        return spans, misspelt, []  # chatter ("sorry", "merci d'avance") names no knob
    name = namer(clause, moves)
    return ([(0, 0, name)], [], [name]) if name is not None else ([], [], [])


def clause_moves(
    clause: str,
    spec: TaskSpec,
    inherited: tuple[int, dict, bool] | None,
    namer: Namer | None = None,
    directioner: Directioner | None = None,
):
    """The moves one clause asks; the (direction, size, keep) a following bare knob name inherits ("halve the
    learning rate and dropout", "keep the learning rate, dropout and weight decay"); the knobs named only by a
    misspelling; those named by ``namer`` or moved in the direction ``directioner`` read (the embedding's)."""
    spans, misspelt, named = clause_spans(clause, spec, namer)
    masked = blanked(clause, spans)
    moves: list[Move] = []
    for start, end, name in spans:
        knob = spec.knob(name) if name != ALPHA else None
        direction, magnitude, keep = knob_move(clause, masked, start, end, knob)
        bare = direction == 0 and not keep and not magnitude
        if bare and inherited is not None:
            direction, magnitude, keep = inherited[0], dict(inherited[1]), inherited[2]
        elif bare and directioner is not None and (direction := directioner(re.sub(r"#+", "it", masked))):
            named.append(name)
        if keep:
            inherited = (0, {}, True)
            moves.append(Move(name, 0))
        elif name in named and "target" in magnitude and knob is not None and not knob.low <= magnitude["target"] <= knob.high:
            continue  # a number the embedding's knob cannot take is not about that knob ("spikes up to 40")
        elif "target" in magnitude or direction != 0:
            inherited = (direction, dict(magnitude), False)
            moves.append(Move(name, direction, **sized(magnitude, knob, direction)))
    return moves, inherited, misspelt, named


def merged(moves: list[Move], found: list[Move]) -> list[Move]:
    """``moves`` with the moves of a later clause added: a knob already moved keeps its first move, unless the
    later one gives a size and the first did not ("it's too big ... go to 3e-4 on the learning rate")."""
    result = list(moves)
    for move in found:
        index = next((i for i, m in enumerate(result) if m.knob == move.knob), None)
        if index is None:
            result.append(move)
        elif not sized_move(result[index]) and sized_move(move) and result[index].direction != 0:
            result[index] = move
    return result


def sized_move(move: Move) -> bool:
    return move.target is not None or move.factor is not None or move.amount is not None


def pronoun_move(clause: str, previous: str | None, spec: TaskSpec) -> Move | None:
    """A clause without a knob name that refers back to the last knob named: "Don't raise dropout. Lower it.",
    "Only the learning rate - bump it.", "ドロップアウト、もう少し弱めで" (a direction alone, after a bare name)."""
    if previous is None or not (PRONOUN.search(clause) or direction_word_positions(clause)):
        return None
    pronoun = PRONOUN.search(clause)
    referring = clause.replace(pronoun.group(0), "#", 1) if pronoun else f"# {clause}"
    found, *_ = clause_moves(referring, spec, None, namer=lambda *_: previous)
    return found[0] if found and (found[0].direction or found[0].target is not None) else None


def read_instruction(
    text: str | None,
    spec: TaskSpec,
    layers: list[str] | None = None,
    namer: Namer | None = None,
    directioner: Directioner | None = None,
) -> Intent:
    """The grammar's :class:`Intent` of an instruction ``text`` for the task ``spec`` whose weight layers are
    ``layers`` (names of weight tensors, first to last). Each knob named takes the direction word nearest to it; a
    negated or excluded one ("do not lower the learning rate", "instead of dropout") and "keep X" are keeps (X
    must not move); a knob named without a direction takes the previous clause's. ``namer`` (clause -> knob name
    or None) names the knob of a clause without a name the grammar knows; ``directioner`` reads the direction of
    a clause that has a knob but no direction word the grammar knows. Never raises: what it cannot read is
    ``unread``."""
    if text is None or not text.strip():
        return Intent("none")
    lowered = normalized(text)
    repeat = bool(REPEAT_PATTERN.search(lowered))
    moves: list[Move] = []
    misspelt: list[str] = []
    named: list[str] = []
    inherited = None
    last_named: str | None = None
    for clause in split_clauses(lowered):
        found, inherited, wrong, guessed = clause_moves(clause, spec, inherited, namer, directioner)
        if not found and not knob_spans(clause, spec) and (move := pronoun_move(clause, last_named, spec)):
            moves = [m for m in moves if m.knob != move.knob]
            found = [move]
        last_named = next((name for *_, name in reversed(knob_spans(clause, spec))), last_named)
        misspelt += wrong
        named += guessed
        moves = merged(moves, found)
        if not found and not knob_spans(clause, spec):
            op = weight_move(clause, layers or [], clause_direction(clause))
            moves += [op] if op is not None else []
    return intent_of(lowered, spec, moves, repeat, tuple(misspelt), tuple(named))


def intent_of(lowered: str, spec: TaskSpec, moves: list[Move], repeat: bool, misspelt: tuple, named: tuple) -> Intent:
    """The :class:`Intent` of the moves read: explicit moves; else "change nothing" (also every knob kept); else
    a goal, with the knobs the text keeps taken out of its moves ("fight overfitting but leave the learning rate
    alone"); else keeps alone; else unread."""
    if any(move.direction != 0 or move.target is not None or move.op for move in moves):
        return Intent("explicit", tuple(moves), repeat=repeat, misspelt=misspelt, named=named)
    kept = {move.knob for move in moves}
    if (HOLD_PATTERN.search(lowered) and not kept) or (kept and kept >= {k.name for k in spec.hyperparameters}):
        return Intent("hold", repeat=True)
    goal = next((goal for goal, pattern in GOALS if pattern.search(lowered)), None) or gap_goal(lowered)
    if goal is not None:
        pursued = tuple((name, d) for name, d in goal_moves(goal, spec) if name not in kept)
        return Intent("goal", tuple(moves), goal=goal, repeat=repeat, goal_moves=pursued, named=named)
    if moves:  # only keeps: "don't touch dropout"
        return Intent("explicit", tuple(moves), repeat=repeat, misspelt=misspelt, named=named)
    return Intent("unread")


def normalized(text: str) -> str:
    """``text`` as the grammar reads it: NFKC (full-width digits and punctuation as ASCII), lower case, one space
    between words, decimal commas as points ("0,1" -> "0.1")."""
    lowered = " ".join(unicodedata.normalize("NFKC", text).lower().replace("`", " ").split())
    return re.sub(r"(?<=\d),(?=\d)", ".", lowered)


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
        return {**dict(intent.goal_moves), **{move.knob: 0 for move in intent.moves if move.knob is not None}}
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
