"""The expert form's rationale: how it opens, and whether the model's sentence is its own (not a copy of the
prompt) and cites only numbers the prompt holds."""

from __future__ import annotations

import math
import re

from agents.expert.candidates import Candidate, Plan
from agents.prompts import SIGNAL_OPENINGS
from agents.trends import training_trends
from bus.messages import EpochMetrics

MIN_RATIONALE_WORDS = 4
COPY_WORDS = 6  # a rationale sharing a run of this many words with the prompt is copied, not the model's own


def reason_opening(m: EpochMetrics, plan: Plan, chosen: Candidate | None = None) -> str:
    """The words that open the rationale after "because": the measured signal's subject and verb ("val_acc has
    not", "train_acc" for a widening gap, "val_acc fell"), or the objective's name, preceded by "you asked, and"
    only when the reading of the user's instruction made the ``chosen`` candidate (``Candidate.asked``; default:
    the plan's first) — a move the reader did not derive from the instruction is not the user's request. Measured on bench.guidance's states: without them the 135M
    model wrote generalities ("it is not possible to change the hyperparameters of a neural network"); with
    them it mostly writes the epoch's numbers ("val_acc fell from 0.88 to 0.4 in one epoch")."""
    train = training_trends(m).train_metric or m.task.objective
    better, worse = ("rose", "fell") if m.task.mode == "max" else ("fell", "rose")
    words = SIGNAL_OPENINGS.get(plan.signal.kind, "{objective}").format(
        objective=m.task.objective, train=train, better=better, worse=worse
    )
    chosen = chosen if chosen is not None else plan.candidates[0]
    return f"you asked, and {words}" if chosen.asked else words


def copied(rationale: str, prompt: str, words: int = COPY_WORDS) -> bool:
    """Whether ``rationale`` repeats a run of ``words`` consecutive words of ``prompt`` (case and punctuation
    ignored), or is shorter than :data:`MIN_RATIONALE_WORDS` words: then it is not the model's own sentence."""
    tokens = re.findall(r"[\w.+-]+", rationale.lower())
    if len(tokens) < MIN_RATIONALE_WORDS:
        return True
    source = " " + " ".join(re.findall(r"[\w.+-]+", prompt.lower())) + " "
    return any(f" {' '.join(tokens[i : i + words])} " in source for i in range(len(tokens) - words + 1))


CITED_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?")
# How a rationale ties a number to a metric it names: "val_acc is 0.88", "val_acc fell from 0.88 to 0.4",
# "val_acc: 0.88". Any other word, or a comma, ends the tie ("train_acc is ahead of val_acc by 0.114": a gap).
CITING_WORDS = frozenset(
    "is was were are at of reached reaches stayed stays stood stands sits remained remains near around about only "
    "still just now has had been rose fell dropped climbed improved went moved from to up down = :".split()
)
# A metric named after one of these is compared or combined ("the gap between train_acc and val_acc is 0.04"):
# the number that follows is not that metric's value.
COMBINING_WORDS = frozenset("and than between vs versus minus over with".split())
TOKEN = re.compile(rf"(?P<number>{CITED_NUMBER.pattern})|(?P<word>[A-Za-z_]\w*)|(?P<mark>[=:,;()])")


def metric_values(m: EpochMetrics) -> dict[str, list[float]]:
    """Every value each metric took in the run so far (history and this epoch): name -> values."""
    values: dict[str, list[float]] = {}
    for metrics in [h.metrics for h in m.history] + [m.metrics]:
        for name, value in metrics.items():
            values.setdefault(name, []).append(value)
    return values


def cited_metrics(text: str, names: list[str]) -> dict[int, str]:
    """Where ``text`` cites a number as a metric's value: the number's start -> the metric ``names`` entry that
    precedes it, joined only by :data:`CITING_WORDS` (and "from X to Y"). A name is matched with "_" or a space
    ("val acc"), case ignored."""
    spans = [
        (match.start(), match.end(), name)
        for name in sorted(names, key=len, reverse=True)
        for match in re.finditer(rf"(?<!\w){'[ _]'.join(map(re.escape, name.split('_')))}(?!\w)", text, re.I)
    ]
    cited: dict[int, str] = {}
    current, previous, name_end = None, None, -1
    for token in TOKEN.finditer(text):
        if token.start() < name_end:  # inside a metric's name already taken
            continue
        span = next((s for s in spans if s[0] == token.start()), None)
        if span is not None:
            current = None if previous in COMBINING_WORDS else span[2]
            name_end, previous = span[1], span[2]
            continue
        word = token.group(0).lower()
        if token.group("number") and current is not None:
            cited[token.start()] = current
        elif word not in CITING_WORDS:
            current = None
        previous = word
    return cited


def _matches(word: str, known: list[float]) -> bool:
    """Whether the number ``word`` is one of ``known`` at the precision it is cited with (see
    :func:`unsupported_numbers`)."""
    value = float(word)
    if "e" in word or "." not in word:  # 1.6e-05, or a whole number: as written, give or take 0.5 %
        return any(math.isclose(value, k, rel_tol=5e-3 if "." not in word else 1e-3) for k in known)
    decimals = len(word.partition(".")[2])
    return any(math.isclose(round(k, decimals), value, abs_tol=1e-12) for k in known)


def unsupported_numbers(text: str, prompt: str, metrics: dict[str, list[float]] | None = None) -> list[str]:
    """The numbers ``text`` cites that ``prompt`` does not hold: a model's invented figures. A cited number is
    supported when a number of the prompt rounds to it at the precision it is cited with ("0.92" for 0.9203;
    "1.6e-05" within 0.1 %; a whole number within 0.5 %: "456" for 456.2, not "1" for 0.885). A count ("2 epochs",
    "3 times", "2x") is not checked. With ``metrics`` (:func:`metric_values`), a number cited as a metric's value
    (:func:`cited_metrics`: "train_acc is 0.6972") must also be one that metric took: 0.6972 under the wrong
    metric's name is as unsupported as an invented number."""
    known = [float(n) for n in CITED_NUMBER.findall(prompt)]
    cited = cited_metrics(text, list(metrics)) if metrics else {}
    unsupported = []
    for match in CITED_NUMBER.finditer(text):
        word = match.group(0)
        if re.match(r"\s*(?:epochs?|times|x\b)", text[match.end() :]):
            continue
        name = cited.get(match.start())
        if not _matches(word, known) or (name is not None and not _matches(word, metrics[name])):
            unsupported.append(word)
    return unsupported


def first_sentence(text: str) -> str:
    """The first sentence (or line) of a generation, stripped, at most 300 characters."""
    text = text.strip().split("\n")[0]
    match = re.search(r"(?<=[.!?])\s", text)
    return (text[: match.start()] if match else text).strip()[:300]
