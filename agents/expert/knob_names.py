"""Where an instruction names a knob: the task's own vocabulary (``Hyperparameter.vocabulary``), alpha's words,
the words of a family the task has one knob of ("clipping" for the clip range), plurals and "-ing" forms, and
misspellings within reach of rapidfuzz. Nothing here knows a task's knobs by name.
"""

from __future__ import annotations

import re

from agents.proposals.parse import ALPHA
from bus.messages import TaskSpec

# How instructions name alpha, ReflectNet's own blend ratio. A task's knobs are named by their own name and the
# aliases the task declares (``Hyperparameter.vocabulary``): nothing here knows a task's knobs.
ALPHA_WORDS = ("alpha", "blend ratio", "blend")
# Words that name the one knob of a family, when the task has exactly one ("tighten the PPO clipping").
FAMILY_WORDS = {
    "learning_rate": ("learning rate", "step size", "lr"),
    "clipping": ("clipping", "clip epsilon", "clip eps", "ppo clip", "clip ratio", "trust region", "clip"),
    "exploration": ("entropy bonus", "entropy", "exploration bonus"),
}
# A name after a count is a count of something ("every few hundred steps", "40k steps"), never a knob.
COUNTED = re.compile(r"(?:\d[\d.,]*\s*k?|\bfew|\bhundreds?|\bthousands?|\bmany|\bseveral|\bevery)\s*$")
FUZZY_SCORE = 85  # rapidfuzz ratio (0-100) above which a misspelt phrase of 6+ letters names a knob


def knob_phrases(spec: TaskSpec) -> list[tuple[str, str]]:
    """(phrase, knob name) for every way an instruction may name a knob of ``spec`` or alpha, longest first: the
    knobs' vocabularies, :data:`ALPHA_WORDS`, and :data:`FAMILY_WORDS` of a family the task has one knob of."""
    named = [(knob.name, knob.vocabulary()) for knob in spec.hyperparameters] + [(ALPHA, ALPHA_WORDS)]
    for family, words in FAMILY_WORDS.items():
        members = [k.name for k in spec.hyperparameters if k.family == family]
        if len(members) == 1:
            named.append((members[0], words))
    return sorted(((phrase, name) for name, words in named for phrase in words), key=lambda p: -len(p[0]))


def knob_spans(clause: str, spec: TaskSpec, fuzzy: bool = True) -> list[tuple[int, int, str]]:
    """Where ``clause`` names the task's knobs (and ``alpha``): (start, end, name), in order; a longer name wins
    over its parts ("weight decay" over "decay"); a plural or "-ing" form counts ("clipping"); with ``fuzzy``, a
    misspelling of a name of 6+ letters (:func:`fuzzy_spans`) too, after the exact names."""
    spans: list[tuple[int, int, str]] = []
    for phrase, name in knob_phrases(spec):
        pattern = re.sub(r"\\ |_|\\-", r"[\\s_-]", re.escape(phrase))  # "clip range" = clip_range = clip-range
        if re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", phrase):  # Chinese, Japanese: no spaces, so no word bounds
            pattern = rf"(?<![a-z]){pattern}"
        else:
            pattern = rf"(?<!\w)(?<!\w-){pattern}(?:s|es|ping|ing)?(?![\w-])"
        for match in re.finditer(pattern, clause):
            if COUNTED.search(clause[: match.start()]):  # "every few hundred steps": a duration, not a knob
                continue
            if not any(a < match.end() and match.start() < b for a, b, _ in spans):
                spans.append((match.start(), match.end(), name))
    if fuzzy:
        spans += [s for s in fuzzy_spans(clause, spec) if not any(a < s[1] and s[0] < b for a, b, _ in spans)]
    return sorted(spans)


def fuzzy_spans(clause: str, spec: TaskSpec) -> list[tuple[int, int, str]]:
    """Misspelt knob names in ``clause`` ("learnin rate", "droupout"): word windows as long as a name of 6+
    letters whose rapidfuzz ratio to it is at least :data:`FUZZY_SCORE`. Why rapidfuzz: edit distance is a
    solved problem; the threshold is the only thing ReflectNet decides."""
    from rapidfuzz import fuzz

    words = list(re.finditer(r"[\w'-]+", clause))
    found: list[tuple[int, int, str]] = []
    for phrase, name in knob_phrases(spec):
        if len(phrase) < 6:
            continue
        size = len(phrase.split())
        for i in range(len(words) - size + 1):
            start, end = words[i].start(), words[i + size - 1].end()
            if fuzz.ratio(clause[start:end], phrase) >= FUZZY_SCORE and not any(
                a < end and start < b for a, b, _ in found
            ):
                found.append((start, end, name))
    return found


def blanked(clause: str, spans: list[tuple[int, int, str]]) -> str:
    """``clause`` with the knob names masked, so that a name's own words ("decay", "drop out") are not read as
    directions."""
    for start, end, _ in spans:
        clause = clause[:start] + "#" * (end - start) + clause[end:]
    return clause
