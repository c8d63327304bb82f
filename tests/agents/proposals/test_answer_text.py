"""find_answer_object and validate_answer against arbitrary text: whatever a model returns — any size,
any nesting, fragments of JSON, reasoning tags, quotes — they answer, they never raise."""

from __future__ import annotations

import json
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.proposals.answer_text import find_answer_object, split_reasoning
from agents.proposals.check import validate_answer
from tests.helpers import make_metrics

METRICS = make_metrics([0.9, 0.91])
REQUIRED = ("dropout", "learning_rate", "alpha")
FRAGMENTS = [
    "{", "}", "[", "]", ",", ":", '"', "'", "\\", " ", "\n", "<think>", "</think>", "<reasoning>", "```json",
    '"dropout"', '"learning_rate"', '"alpha"', '"rationale"', "0.2", "1e-3", "-", "NaN", "true", "null", "9" * 40,
    "dropout", "//", "/*", "*/", "\u00e9", "\x00",
]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=8), max_size=60))
def test_fragments_of_json_never_raise(parts):
    text = "".join(parts)
    found = find_answer_object(text, REQUIRED)
    assert (found.value is None) == (found.error is not None)
    result = validate_answer(text, METRICS)
    assert (result.command is None) == bool(result.errors)


@settings(max_examples=200, deadline=None)
@given(json_values, st.sampled_from(["free", "grid"]))
def test_any_json_value_in_any_field_never_raises(value, command_space):
    for answer in ({"dropout": value, "learning_rate": 1e-3, "alpha": 0.4}, {"weight_modulation": value}, value):
        result = validate_answer(json.dumps(answer), METRICS, command_space)
        assert (result.command is None) == bool(result.errors)


def test_large_and_deep_inputs_are_answered_quickly():
    cases = [
        "{" * 1_000_000,
        "[" * 1_000_000,
        '{"a":' * 200_000,
        "<think>" * 100_000,
        "{}" * 500_000,
        '"' * 1_000_000,
        "{'" * 500_000,
        '{"rationale": "' + "x" * 5_000_000,
    ]
    for text in cases:
        started = time.perf_counter()
        result = validate_answer(text, METRICS)
        assert result.command is None and result.errors, text[:20]
        assert time.perf_counter() - started < 10, text[:20]


def test_reasoning_blocks_nest_and_a_stray_closing_tag_ends_the_reasoning():
    assert split_reasoning("a<think>b<think>c</think>d</think>e") == ("ae", ["b<think>c</think>d"])
    assert split_reasoning("plan</think>answer") == ("answer", ["plan"])
    assert split_reasoning("x<THINKING>never closed") == ("x", ["never closed"])
