"""The expert form's rationale: how it opens, and whether the model's sentence is its own (not a copy of the
prompt) and cites only numbers the prompt holds."""

from __future__ import annotations

import math
import re

from agents.expert.candidates import Plan
from agents.prompts import SIGNAL_OPENINGS
from agents.trends import training_trends
from bus.messages import EpochMetrics

MIN_RATIONALE_WORDS = 4
COPY_WORDS = 6  # a rationale sharing a run of this many words with the prompt is copied, not the model's own


def reason_opening(m: EpochMetrics, plan: Plan) -> str:
    """The words that open the rationale after "because": the measured signal's subject and verb ("val_acc has
    not", "train_acc" for a widening gap, "val_acc fell"), or the objective's name, preceded by "you asked, and"
    when the user's instruction chose the action. Measured on bench.guidance's states: without them the 135M
    model wrote generalities ("it is not possible to change the hyperparameters of a neural network"); with
    them it mostly writes the epoch's numbers ("val_acc fell from 0.88 to 0.4 in one epoch")."""
    train = training_trends(m).train_metric or m.task.objective
    better, worse = ("rose", "fell") if m.task.mode == "max" else ("fell", "rose")
    words = SIGNAL_OPENINGS.get(plan.signal.kind, "{objective}").format(
        objective=m.task.objective, train=train, better=better, worse=worse
    )
    return f"you asked, and {words}" if plan.source == "instruction" else words


def copied(rationale: str, prompt: str, words: int = COPY_WORDS) -> bool:
    """Whether ``rationale`` repeats a run of ``words`` consecutive words of ``prompt`` (case and punctuation
    ignored), or is shorter than :data:`MIN_RATIONALE_WORDS` words: then it is not the model's own sentence."""
    tokens = re.findall(r"[\w.+-]+", rationale.lower())
    if len(tokens) < MIN_RATIONALE_WORDS:
        return True
    source = " " + " ".join(re.findall(r"[\w.+-]+", prompt.lower())) + " "
    return any(f" {' '.join(tokens[i : i + words])} " in source for i in range(len(tokens) - words + 1))


CITED_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?")


def unsupported_numbers(text: str, prompt: str) -> list[str]:
    """The numbers ``text`` cites that ``prompt`` does not hold: a model's invented figures. A cited number is
    supported when a number of the prompt rounds to it at the precision it is cited with ("0.92" for 0.9203;
    "1.6e-05" within 0.1 %; a whole number within 0.5 %: "456" for 456.2, not "1" for 0.885). A count ("2 epochs", "3 times", "2x") is not checked."""
    known = [float(n) for n in CITED_NUMBER.findall(prompt)]
    unsupported = []
    for match in CITED_NUMBER.finditer(text):
        word, value = match.group(0), float(match.group(0))
        if re.match(r"\s*(?:epochs?|times|x\b)", text[match.end() :]):
            continue
        if "e" in word or "." not in word:  # 1.6e-05, or a whole number: as written, give or take 0.5 %
            supported = any(math.isclose(value, k, rel_tol=5e-3 if "." not in word else 1e-3) for k in known)
        else:
            decimals = len(word.partition(".")[2])
            supported = any(math.isclose(round(k, decimals), value, abs_tol=1e-12) for k in known)
        if not supported:
            unsupported.append(word)
    return unsupported


def first_sentence(text: str) -> str:
    """The first sentence (or line) of a generation, stripped, at most 300 characters."""
    text = text.strip().split("\n")[0]
    match = re.search(r"(?<=[.!?])\s", text)
    return (text[: match.start()] if match else text).strip()[:300]
