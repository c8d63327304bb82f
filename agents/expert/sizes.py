"""How much an instruction asks a knob to move: a target ("to 0.3", "off"), a factor ("halve", "by 20%", "an
order of magnitude", ``lr/2``) or an amount ("by 0.1", ``dropout += 0.1``), read from the words and the code
notation around the knob's name. Nothing found means one step of the knob (``Hyperparameter.step``).
"""

from __future__ import annotations

import re

from agents.expert.lexicon import (
    DOUBLE,
    HALF,
    NUMBER,
    OFF,
    ORDER_OF_MAGNITUDE,
    SMALL_PATTERN,
    TARGET_WORDS,
    TRIPLE,
)
from bus.messages import Hyperparameter

SMALL_LOG_FACTOR = 1.5  # "lower the learning rate a little": divide by 1.5 rather than by the knob's step


def factor_for(value: float, direction: int) -> dict:
    """A factor ``value`` ("3x", "by 3") as a move: multiply when up, divide when down; nothing for 0 or 1."""
    if value <= 0 or value == 1:
        return {}
    return {"factor": value if direction >= 0 else 1 / value} if value > 1 else {"factor": value}


def code_magnitude(after: str) -> dict:
    """Code notation right after a knob's name: ``lr/2``, ``lr *= 0.5``, ``lr x2``, ``dropout=.3``,
    ``lr -> 3e-4``, ``lr: 1e-4``, ``dropout += 0.1``, ``lr = lr * 2``."""
    after = re.sub(r"^\s*=\s*#+", "", after)  # "lr = lr * 2"
    if m := re.match(rf"\s*[:=]?\s*{NUMBER}\s*(?:->|→|=>|\bto\b)\s*{NUMBER}", after):  # "lr: 1e-3 -> 2e-3"
        return {"target": float(m.group(2))}
    if m := re.match(rf"\s*(?:/=?|÷)\s*{NUMBER}", after):
        value = float(m.group(1))
        return {"factor": 1 / value} if value > 0 else {}
    if m := re.match(rf"\s*(?:\*=?|x|×)\s*{NUMBER}", after):
        value = float(m.group(1))
        return {"factor": value} if value > 0 else {}
    if m := re.match(rf"\s*([+-])=?\s*{NUMBER}", after):  # "dropout += 0.1", "dropout +0.1"
        return {"amount": float(m.group(2)), "direction": 1 if m.group(1) == "+" else -1}
    if m := re.match(rf"\s*(?:=|->|→|:=|:|=>|\bde\b|\bof\b)?\s*{NUMBER}(?![\d.])(?!\s*(?:x|times|%|×|fold))", after):
        return {"target": float(m.group(1))}
    return {}


def fraction_word(clause: str) -> float | None:
    """ "by a third" -> 1/3, "by a quarter" -> 1/4, "by a tenth" -> 1/10."""
    words = {"third": 1 / 3, "quarter": 1 / 4, "fifth": 1 / 5, "tenth": 1 / 10, "half": 1 / 2}
    m = re.search(r"\bby (?:a|one) (third|quarter|fifth|tenth|half)\b", clause)
    return words[m.group(1)] if m else None


def clause_magnitude(clause: str, knob: Hyperparameter | None, direction: int) -> dict:
    """The size of a move in ``clause``: ``target`` ("to 0.3", "off"), ``factor`` ("halve", "by a factor of 3",
    "by 20%", "an order of magnitude", "a little") or ``amount`` ("by 0.1"); empty when the clause says none
    (the knob's step is used)."""
    if m := re.search(rf"(?:multipl\w*|scale\w*).{{0,40}}? (?:by|par|por|per|mit|um)\s*{NUMBER}", clause):
        return factor_for(float(m.group(1)), 1) if float(m.group(1)) > 1 else {"factor": float(m.group(1))}
    if m := re.search(rf"(?:divid|divis|teil)\w*.{{0,40}}? (?:by|par|por|per|durch)\s*{NUMBER}", clause):
        return {"factor": 1 / float(m.group(1))} if float(m.group(1)) > 0 else {}
    if OFF.search(clause) or re.search(r"(?:^|\bwith |\bplease |\buse )no #", clause):
        return {"target": knob.low} if knob is not None else {"target": 0.0}
    if m := ORDER_OF_MAGNITUDE.search(clause):
        orders = (
            2 if re.search(r"\btwo\b|\b2\b|dos|deux|zwei|duas|两|二", clause[max(0, m.start() - 12) : m.start()]) else 1
        )
        return {"factor": 10.0 ** (orders if direction >= 0 else -orders)}
    if m := re.search(rf"{NUMBER}\s*(?:%|percent|por ?ciento|pour ?cent|prozent|por cento)", clause):
        share = float(m.group(1)) / 100
        return {"factor": 1 + share if direction >= 0 else max(1 - share, 0.01)} if direction != 0 else {}
    if (third := fraction_word(clause)) is not None:
        return {"factor": 1 + third if direction >= 0 else 1 - third}
    if m := re.search(r"(\d+)\s*分[の之]\s*(?:一|1)", clause):  # "10分の1", "十分之一" after NFKC digits
        return {"factor": 1 / float(m.group(1))} if float(m.group(1)) > 0 else {}
    if re.search(r"十分[の之](?:一|1)", clause):
        return {"factor": 0.1}
    if HALF.search(clause):
        return {"factor": 1.5} if direction > 0 and re.search(r"\bby half|half again", clause) else {"factor": 0.5}
    if re.search(r"quadrupl|vierfach|4倍|四倍", clause):
        return {"factor": 4.0}
    if TRIPLE.search(clause):
        return {"factor": 3.0}
    if DOUBLE.search(clause):
        return {"factor": 2.0}
    if m := re.search(rf"{TARGET_WORDS}\s*{NUMBER}", clause):
        return {"target": float(m.group(1))}
    if m := re.search(rf"factor of\s*{NUMBER}|\b{NUMBER}\s*(?:x|times|×|fold)|(?:x|×)\s*{NUMBER}\b", clause):
        return factor_for(float(next(g for g in m.groups() if g)), direction)
    if m := re.search(rf"\badd\s*{NUMBER}|\bplus\s*{NUMBER}|加\s*{NUMBER}", clause):
        return {"amount": float(next(g for g in m.groups() if g))}
    if m := re.search(rf"\bby\s*{NUMBER}", clause):
        value = float(m.group(1))
        if knob is not None and knob.scale == "log":  # "by 3": a factor; "by 1e-4": an amount; "by 0.5": unclear
            return factor_for(value, direction) if value > 1 else {"amount": value} if value < knob.default else {}
        return {"amount": value}
    if SMALL_PATTERN.search(clause):
        return {"small": True}
    return {}


def sized(magnitude: dict, knob: Hyperparameter | None, direction: int) -> dict:
    """:func:`clause_magnitude`'s answer as :class:`Move` fields: "a little" is a factor of
    :data:`SMALL_LOG_FACTOR` for a log-scale knob, half a step for a linear one, 0.1 for alpha."""
    magnitude = {k: v for k, v in magnitude.items() if k != "direction"}
    if not magnitude.pop("small", False):
        return magnitude
    if knob is None:
        return {"amount": 0.1}
    return {"factor": SMALL_LOG_FACTOR**direction} if knob.scale == "log" else {"amount": knob.step / 2}
