"""The expert block: what a user's instruction asks, what the measured trends say, and the few candidate
actions a model chooses among.

A 135M-parameter model cannot read a training state and an instruction and derive a good command by itself
(``../shared/notes/small-model-guidance.md``: free generation and plain enum choice follow position and prior
biases). Local 14B-32B models come within about a point of GPT-4 at hyperparameter tuning only with a
deterministic summary of the trajectory (arXiv 2509.15561); a 135M model needs at least as much help. So this
module, with no model, turns the state into a :class:`Plan`: the instruction read as an :class:`Intent`
(explicit moves of named knobs, a goal such as "fight overfitting", or "change nothing"), the evidence read as
a :class:`Signal` (plateau, widening gap, diverging, steady gains), and the :class:`Candidate` actions that
are consistent with both, each with its reason. A chooser (``agents.expert``) lets the model pick one and say
why; the validator still bounds the command.

Precedence: the user's instruction, then the evidence. A one-shot instruction ("halve the learning rate") is
carried out at the first decision it shapes; afterwards it constrains (no candidate moves against it) until
it is replaced or withdrawn. Instructions that say "every epoch"/"keep lowering" repeat, and "change nothing"
holds every decision.

Why a lexicon and not a parser library: the vocabulary is the field's own (knob names, "halve", "overfitting")
and small; a general NLU model is exactly what is not available offline at this size.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Literal

# The heuristic's thresholds and limits: the evidence reads the trends as the rule policy does.
from agents.policies import GAP_NOISE_BANDS, MAX_HEURISTIC_DROPOUT, MIN_LR, PLATEAU_EPOCHS
from agents.trends import Trends, current_values, step_digits, training_trends
from bus.messages import EpochMetrics, Hyperparameter, TaskSpec, UpdateCommand

ALPHA = "alpha"
# How instructions name the knobs of the built-in tasks and the field's usual ones; any knob is also named by
# its own name, with underscores read as spaces.
KNOB_ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("learning rate", "learning-rate", "lr", "step size", "stepsize", "steps", "step", "update size"),
    "dropout": ("dropout", "drop-out", "drop out"),
    "weight_decay": ("weight decay", "weight-decay", "l2 penalty", "l2"),
    "ent_coef": ("entropy coefficient", "entropy bonus", "entropy"),
    "clip_range": ("clip range", "clipping range", "clip"),
    ALPHA: ("alpha", "blend ratio", "blend"),
}
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
REPEAT_PATTERN = re.compile(r"\bevery\b|\beach\b|\bkeep (?:lowering|raising|reducing|increasing|cutting)|\bcontinu|\bagain and again")
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
GOAL_MOVES: dict[str, tuple[tuple[str, int], ...]] = {
    "less overfitting": (("dropout", 1), ("weight_decay", 1), ("learning_rate", -1)),
    "less underfitting": (("dropout", -1), ("weight_decay", -1), ("learning_rate", 1)),
    "stability": (("learning_rate", -1), ("clip_range", -1), (ALPHA, -1)),
    "speed": (("learning_rate", 1),),
    "exploration": (("ent_coef", 1),),
    "exploitation": (("ent_coef", -1),),
    "escape the plateau": (("learning_rate", -1),),
}
WEIGHTS_PATTERN = re.compile(r"\bweights?\b(?! decay)|\blayers?\b")
LAYER_WORDS = {"last": -1, "final": -1, "output": -1, "top": -1, "first": 0, "input": 0, "bottom": 0}
SMALL_PATTERN = re.compile(r"a little|slightly|a bit|a touch|somewhat|gently|a tad|marginally|(?<!too )\bsmall\b")
SMALL_OP, DEFAULT_OP = 0.02, 0.03  # weight-operation sizes, as fractions of a layer's norm (at most 0.05)
ALPHA_STEP = 0.2  # how far "lower alpha" moves it (the grid command space's step)
SMALL_LOG_FACTOR = 1.5  # "lower the learning rate a little": divide by 1.5 rather than by the knob's step
DIVERGING_BANDS = 10  # the objective worsened by this many noise bands in one epoch: the run is diverging

IntentKind = Literal["explicit", "goal", "hold", "unread", "none"]
SignalKind = Literal["diverging", "plateau", "overfitting", "steady", "unclear", "start", "settling"]
Outcome = Literal["followed", "ignored", "contradicted", "respected"]


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

    def words(self) -> str:
        """The intent in a few words, for records: ``explicit: learning_rate down``, ``goal: speed``."""
        if self.kind == "explicit":
            return "explicit: " + ", ".join(
                f"{m.knob} to {m.target:g}" if m.target is not None else f"{m.knob or m.op} {('down', 'keep', 'up')[m.direction + 1]}"
                for m in self.moves
            )
        return f"goal: {self.goal}" if self.kind == "goal" else self.kind


@dataclass(frozen=True)
class Signal:
    """What the measured trends say after this epoch (:func:`read_signal`), with the sentence that says why."""

    kind: SignalKind
    reason: str


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


# --------------------------------------------------------------------------- reading the instruction


def knob_spans(clause: str, spec: TaskSpec) -> list[tuple[int, int, str]]:
    """Where ``clause`` names the task's knobs (and ``alpha``): (start, end, name), in order; a longer name wins
    over its parts ("weight decay" over "decay")."""
    names = [*spec.knob_names(), ALPHA]
    phrases = sorted(
        ((phrase, name) for name in names for phrase in {*KNOB_ALIASES.get(name, ()), name.replace("_", " "), name}),
        key=lambda p: -len(p[0]),
    )
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


def direction_words(text: str) -> list[tuple[int, int]]:
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
    words = direction_words(text)
    if not words:
        return 0, False
    at, direction = min(words, key=lambda w: abs(w[0] - position))
    return direction, bool(NEGATION.search(text[max(0, at - 20) : at]))


def clause_direction(clause: str) -> int:
    """+1, -1 or 0: the direction asked in ``clause`` as a whole (its first direction word)."""
    words = direction_words(clause)
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
            return {"factor": value if direction > 0 else 1 / value} if value > 1 else {"amount": value} if value < knob.default else {}
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
            return Intent("goal", goal=goal, repeat=repeat)
    return Intent("unread")


# --------------------------------------------------------------------------- reading the evidence


def epochs_at_current_values(m: EpochMetrics) -> int:
    """How many epochs, ending with this one, trained with the knob values and alpha this epoch used."""
    count = 0
    for h in reversed(m.history):
        if h.hyperparameters != m.history[-1].hyperparameters or h.alpha != m.history[-1].alpha:
            break
        count += 1
    return count


def read_signal(m: EpochMetrics, t: Trends | None = None) -> Signal:
    """The unambiguous signals first: a diverging objective (not finite, or worse by :data:`DIVERGING_BANDS`
    noise bands in one epoch); then, unless the knobs changed fewer than :data:`PLATEAU_EPOCHS` epochs ago
    (``settling``: a change is given time to act, as ``ReduceLROnPlateau``'s cooldown), a widening
    generalization gap beyond :data:`GAP_NOISE_BANDS` bands, a plateau (no new best for
    :data:`PLATEAU_EPOCHS` epochs since the best and since the last change), steady gains (a new best, beyond
    the noise band, this epoch); else ``unclear`` (``start`` at the first epoch)."""
    spec, t = m.task, t or training_trends(m)
    value = m.objective_value
    if not math.isfinite(value):
        return Signal("diverging", f"{spec.objective} is {value}: the run is diverging")
    if len(m.history) >= 2:
        before = m.history[-2].metrics.get(spec.objective, math.nan)
        change = spec.improvement(before, value)
        if math.isfinite(before) and change < -DIVERGING_BANDS * spec.noise_band:
            return Signal("diverging", f"{spec.objective} fell from {before:.4g} to {value:.4g} in one epoch")
    if len(m.history) < 2:
        return Signal("start", "only one epoch so far")
    settled = epochs_at_current_values(m)
    if settled < PLATEAU_EPOCHS:
        return Signal("settling", f"the hyperparameters changed {settled} epoch(s) ago: their effect is not measured yet")
    if t.gap is not None and t.previous_gap is not None and t.gap > GAP_NOISE_BANDS * spec.noise_band and t.gap > t.previous_gap:
        return Signal("overfitting", f"the train/validation gap widened from {t.previous_gap:.3g} to {t.gap:.3g}")
    if t.epochs_since_best >= PLATEAU_EPOCHS:  # and settled >= PLATEAU_EPOCHS, checked above
        return Signal("plateau", f"no new best {spec.objective} for {t.epochs_since_best} epochs (best {t.best:.4g} at epoch {t.best_epoch})")
    before = m.history[-2].metrics.get(spec.objective, math.nan)
    if t.epochs_since_best == 0 and spec.improvement(before, value) > spec.noise_band:
        return Signal("steady", f"{spec.objective} improved from {before:.4g} to {value:.4g}, a new best")
    return Signal("unclear", f"{spec.objective} {value:.4g}, best {t.best:.4g} at epoch {t.best_epoch}: no clear trend yet")


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
        return {move.knob: target_direction(move, values or {}, alpha) for move in intent.moves if move.knob is not None}
    if intent.kind == "goal":
        return dict(GOAL_MOVES.get(intent.goal or "", ()))
    return {}


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
    values = current_values(m)
    same = all(m.task.knob(n).direction(command.hyperparameters.get(n, v), v) == 0 for n, v in values.items())
    return same and math.isclose(command.alpha, m.alpha, abs_tol=1e-12) and not command.modulated_layers()
