import json

import pytest

from agents.nodes.validator import MAX_DELTA_NORM_RATIO, validate_answer
from tests.helpers import make_metrics

METRICS = make_metrics([0.9, 0.91])


def check(answer):
    text = answer if isinstance(answer, str) else json.dumps(answer)
    return validate_answer(text, METRICS)


def test_valid_answer_inside_prose_and_fences():
    command, _, clamped, errors = check(
        'Sure!\n```json\n{"dropout": 0.3, "learning_rate": 0.0005, "alpha": 0.4, "rationale": "r"}\n```'
    )
    assert errors == [] and clamped == {}
    assert (command.dropout, command.learning_rate, command.alpha, command.rationale) == (0.3, 0.0005, 0.4, "r")


def test_values_outside_the_trust_region_are_clamped_and_recorded():
    # current: dropout 0.2, lr 1e-3 -> allowed dropout [0.0, 0.4], lr [3.33e-4, 3e-3], alpha [0, 1]
    command, _, clamped, errors = check({"dropout": 1.5, "learning_rate": 2.0, "alpha": -0.1, "rationale": ""})
    assert errors == []
    assert (command.dropout, command.learning_rate, command.alpha) == (0.4, pytest.approx(3e-3), 0.0)
    assert clamped["dropout"] == {"from": 1.5, "to": 0.4} and clamped["alpha"] == {"from": -0.1, "to": 0.0}
    assert clamped["learning_rate"]["to"] == pytest.approx(3e-3)
    command, _, clamped, _ = check({"dropout": 0.0, "learning_rate": 1e-6, "alpha": 1.0, "rationale": ""})
    assert command.learning_rate == pytest.approx(1e-3 / 3) and "dropout" not in clamped


@pytest.mark.parametrize(
    "answer, error",
    [
        ("I think you should lower the learning rate.", "not valid JSON"),
        ('{"dropout": 0.3, "learning_rate": 0.001', "not valid JSON"),
        ({"dropout": "high", "learning_rate": 1e-3, "alpha": 0.4}, "dropout must be a number"),
        ({"dropout": True, "learning_rate": 1e-3, "alpha": 0.4}, "dropout must be a number"),
        ('{"dropout": NaN, "learning_rate": 0.001, "alpha": 0.4}', "dropout must be finite"),
        ({"learning_rate": 1e-3, "alpha": 0.4}, "missing required field 'dropout'"),
        (
            {"dropout": 0.2, "learning_rate": 1e-3, "alpha": 0.4, "weight_modulation": {"fc.9.weight": [1]}},
            "unknown layer 'fc.9.weight'",
        ),
        (
            {"dropout": 0.2, "learning_rate": 1e-3, "alpha": 0.4, "weight_modulation": {"fc.3.bias": [0.0] * 9}},
            "has shape [9], expected [10]",
        ),
        (
            {
                "dropout": 0.2,
                "learning_rate": 1e-3,
                "alpha": 0.4,
                "weight_modulation": {"fc.3.bias": [[0.0], [1.0, 2.0]]},
            },
            "not a rectangular array",
        ),
        ({"dropout": 0.2, "learning_rate": 1e-3, "alpha": 0.4, "rationale": 7}, "rationale must be a string"),
    ],
)
def test_invalid_answers_name_the_problem_and_keep_the_valid_parts(answer, error):
    command, partial, _, errors = check(answer)
    assert command is None
    assert any(error in e for e in errors), errors
    if isinstance(answer, dict) and isinstance(answer.get("learning_rate"), float):
        assert partial["learning_rate"] == answer["learning_rate"]


def test_modulation_of_the_right_shape_is_accepted_and_norm_capped():
    big = [5.0] * 10  # norm 15.8, cap is 5% of the weight norm 10.0 = 0.5
    command, _, clamped, errors = check(
        {"dropout": 0.2, "learning_rate": 1e-3, "alpha": 0.4, "weight_modulation": {"fc.3.bias": big}}
    )
    assert errors == []
    delta = command.weight_modulation["fc.3.bias"]
    assert len(delta) == 10
    assert sum(v * v for v in delta) ** 0.5 == pytest.approx(MAX_DELTA_NORM_RATIO * 10.0)
    assert clamped["weight_modulation.fc.3.bias.norm"]["to"] == pytest.approx(0.5)


def test_absurdly_large_integers_are_an_error_or_a_clamp_not_a_crash():
    huge = "9" * 400
    _, _, _, errors = check(f'{{"dropout": {huge}, "learning_rate": 0.001, "alpha": 0.4, "rationale": ""}}')
    assert any("dropout is too large" in e for e in errors)
    text = f'{{"dropout": 0.2, "learning_rate": 0.001, "alpha": 0.4, "rationale": "", "weight_modulation": [{{"layer": "fc.3.weight", "op": "scale", "factor": {huge}}}]}}'
    command, _, clamped, errors = check(text)
    assert errors == [] and command.weight_ops[0].value == 1.05
