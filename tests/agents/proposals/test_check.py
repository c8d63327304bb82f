import json

import pytest

from agents.proposals.check import MAX_DELTA_NORM_RATIO, allowed_ranges, grid_choices, validate_answer
from tests.helpers import make_metrics, make_regression_metrics

METRICS = make_metrics([0.9, 0.91])


def check(answer, command_space="free"):
    text = answer if isinstance(answer, str) else json.dumps(answer)
    checked = validate_answer(text, METRICS, command_space)
    return checked.command, checked.partial, checked.clamped, checked.errors


def test_valid_answer_inside_prose_and_fences():
    command, _, clamped, errors = check(
        'Sure!\n```json\n{"dropout": 0.3, "learning_rate": 0.0005, "alpha": 0.4, "rationale": "r"}\n```'
    )
    assert errors == [] and clamped == {}
    assert command.hyperparameters == {"dropout": 0.3, "learning_rate": 0.0005}
    assert (command.alpha, command.rationale) == (0.4, "r")


def test_values_outside_the_trust_region_are_clamped_and_recorded():
    # current: dropout 0.2, lr 1e-3 -> allowed dropout [0.0, 0.4], lr [3.33e-4, 3e-3], alpha [0, 1]
    command, _, clamped, errors = check({"dropout": 0.9, "learning_rate": 0.05, "alpha": 0.0, "rationale": ""})
    assert errors == []
    assert command.hyperparameters == {"dropout": 0.4, "learning_rate": pytest.approx(3e-3)} and command.alpha == 0.0
    assert clamped["dropout"] == {"from": 0.9, "to": 0.4} and "alpha" not in clamped
    assert clamped["learning_rate"]["to"] == pytest.approx(3e-3)
    command, _, clamped, _ = check({"dropout": 0.0, "learning_rate": 1e-6, "alpha": 1.0, "rationale": ""})
    assert command.hyperparameters["learning_rate"] == pytest.approx(1e-3 / 3) and "dropout" not in clamped


@pytest.mark.parametrize(
    "answer, error",
    [
        ("I think you should lower the learning rate.", "not valid JSON"),
        ('{"dropout": 0.3, "learning_rate": 0.001', "not valid JSON"),
        ("[" * 5000 + "]" * 5000, "answer contains no JSON object"),
        ('{"a": ' * 5000 + "1" + "}" * 5000, "nests deeper than 64 levels"),
        ('{"dropout": 0.2, "learning_rate": 0.001, "alpha": 0.4, "x": ' + "[" * 70, "nests deeper than 64 levels"),
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
        # not a setting at all: an error for the repairer, not a clamp into a real move
        ({"dropout": 0.2, "learning_rate": -0.01, "alpha": 0.4}, "learning_rate=-0.01 is not a valid setting"),
        ({"dropout": 0.2, "learning_rate": 0.0, "alpha": 0.4}, "learning_rate=0 is not a valid setting"),
        (
            {"dropout": 5, "learning_rate": 1e-3, "alpha": 0.4},
            "dropout=5 is not a valid setting: it must lie in [0, 0.9]",
        ),
        ({"dropout": 0.2, "learning_rate": 1e-3, "alpha": 1.5}, "alpha=1.5 is not a valid setting"),
        ({"dropout": "0.2x", "learning_rate": 1e-3, "alpha": 0.4}, "dropout must be a number"),
        ({"dropout": "nan", "learning_rate": 1e-3, "alpha": 0.4}, "dropout must be a number"),
    ],
)
def test_invalid_answers_name_the_problem_and_keep_the_valid_parts(answer, error):
    command, partial, _, errors = check(answer)
    assert command is None
    assert any(error in e for e in errors), errors
    if isinstance(answer, dict) and isinstance(answer.get("learning_rate"), float) and "learning_rate" not in error:
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


GOOD = {"dropout": 0.3, "learning_rate": 0.0005, "alpha": 0.4, "rationale": "r"}


def checked(text, command_space="free"):
    return validate_answer(text, METRICS, command_space)


def test_a_reasoning_block_is_set_aside_and_kept_in_the_notes():
    result = checked('<think>maybe {"learning_rate": 0.0007}? no, keep it lower</think>\n' + json.dumps(GOOD))
    assert result.errors == [] and result.command.hyperparameters["learning_rate"] == 0.0005
    assert result.notes == {"reasoning": 'maybe {"learning_rate": 0.0007}? no, keep it lower'}
    # a template that opened the block in the prompt leaves only the closing tag in the answer
    result = checked("the gap widens, so more dropout</think>" + json.dumps(GOOD))
    assert (
        result.command.hyperparameters["dropout"] == 0.3
        and result.notes["reasoning"] == "the gap widens, so more dropout"
    )


def test_an_answer_still_reasoning_when_cut_off_names_that():
    result = checked('<think>first {"dropout": 0.3, "learning_rate": 0.0005, "alpha": 0.4} then')
    assert result.command is None and result.errors == [
        "answer is not valid JSON: answer contains no JSON object outside its reasoning block"
    ]


def test_the_first_object_with_the_required_fields_is_taken_and_the_others_noted():
    twice = json.dumps(GOOD) + "\n" + json.dumps(GOOD)
    result = checked(twice)
    assert result.errors == [] and result.command.hyperparameters["dropout"] == 0.3
    assert result.notes["objects"].startswith("2 JSON objects, 2 with all of")
    other = json.dumps({**GOOD, "dropout": 0.35})
    result = checked('Example: {"dropout": 0.1}. My answer: ' + json.dumps(GOOD) + " or maybe " + other)
    assert result.command.hyperparameters["dropout"] == 0.3
    assert result.notes["objects"].endswith("the others differ in ['dropout']")


@pytest.mark.parametrize(
    "slip",
    [
        '{"dropout": 0.3, "learning_rate": 0.0005, "alpha": 0.4, "rationale": "r",}',
        "{'dropout': 0.3, 'learning_rate': 0.0005, 'alpha': 0.4, 'rationale': 'r'}",
        '{dropout: 0.3, learning_rate: 0.0005, alpha: 0.4, rationale: "r"}',
        '{"dropout": 0.3, // more regularisation\n "learning_rate": 0.0005, "alpha": 0.4, "rationale": "r"}',
        '```json\n{"dropout": 0.3 "learning_rate": 0.0005 "alpha": 0.4 "rationale": "r"}\n```',
    ],
)
def test_common_syntax_slips_are_accepted_with_a_note(slip):
    result = checked(slip)
    assert result.errors == [], result.errors
    assert result.command.hyperparameters == {"dropout": 0.3, "learning_rate": 0.0005} and result.command.alpha == 0.4
    assert result.notes["lenient_json"][0].startswith("not strict JSON: ")


def test_a_field_given_twice_is_flagged_not_resolved_silently():
    result = checked(
        '{"dropout": 0.3, "learning_rate": 0.002, "learning_rate": 0.0005, "alpha": 0.4, "rationale": "r"}'
    )
    assert result.command.hyperparameters["learning_rate"] == 0.0005  # the last value, as JSON parsers do, and said so
    assert result.notes["ambiguous"] == ["field 'learning_rate' is given more than once; the last value is used"]
    ops = '[{"layer": "fc.3.weight", "op": "scale", "factor": 0.98, "factor": 1.02}]'
    result = checked(json.dumps(GOOD)[:-1] + f', "weight_modulation": {ops}}}')
    assert result.notes["ambiguous"] == [
        "field 'weight_modulation[].factor' is given more than once; the last value is used"
    ]


def test_an_answer_cut_off_inside_its_rationale_keeps_the_complete_fields():
    result = checked('{"dropout": 0.3, "learning_rate": 0.0005, "alpha": 0.4, "rationale": "val acc st')
    assert result.errors == [] and result.command.rationale == "val acc st"
    assert result.notes["cut_off"] == "the text ends inside the value of 'rationale'; the complete fields are used"
    # cut inside a number, it could have meant anything: refused
    result = checked('{"dropout": 0.3, "learning_rate": 0.0005, "alpha": 0.4')
    assert result.command is None and "is cut off: the text ends after the field 'alpha'" in result.errors[0]


def test_the_grid_snaps_off_grid_numbers_and_records_each_snap_as_a_clamp():
    # current dropout 0.2, lr 1e-3, alpha 0.4: grid dropout {0.1, 0.2, 0.3}, lr {5e-4, 1e-3, 2e-3}, alpha steps of 0.2
    off_grid = {"dropout": 0.27, "learning_rate": 0.0017, "alpha": 0.33, "rationale": "r"}
    result = checked(json.dumps(off_grid), "grid")
    assert result.errors == []
    assert result.command.hyperparameters == {"dropout": 0.3, "learning_rate": 0.002} and result.command.alpha == 0.4
    assert result.clamped == {
        "dropout": {"from": 0.27, "to": 0.3, "grid": True},
        "learning_rate": {"from": 0.0017, "to": 0.002, "grid": True},
        "alpha": {"from": 0.33, "to": 0.4, "grid": True},
    }
    assert "the server may not have applied the schema" in result.notes["off_grid"]
    # beyond the trust region: clamped into range first, then onto the grid; the record keeps the answer
    result = checked(json.dumps({**off_grid, "learning_rate": 0.05, "dropout": 0.2, "alpha": 0.4}), "grid")
    assert result.clamped == {"learning_rate": {"from": 0.05, "to": 0.002, "grid": True}}
    on_grid = checked(json.dumps({"dropout": 0.1, "learning_rate": 0.0005, "alpha": 1.0, "rationale": "r"}), "grid")
    assert on_grid.errors == [] and on_grid.clamped == {} and on_grid.notes == {}
    # the same numbers pass unchanged in the free command space
    assert checked(json.dumps(off_grid)).clamped == {}


def test_the_grid_takes_one_operation_on_its_grid_and_no_raw_delta():
    ops = [
        {"layer": "fc.3.weight", "op": "scale", "factor": 0.99},
        {"layer": "conv.0.weight", "op": "noise", "scale": 0.01},
    ]
    result = checked(json.dumps({**GOOD, "learning_rate": 0.0005, "weight_modulation": ops}), "grid")
    assert [(op.layer, op.value) for op in result.command.weight_ops] == [("fc.3.weight", 0.98)]
    assert result.clamped["weight_ops.count"] == {"from": 2, "to": 1, "grid": True}
    assert result.clamped["weight_ops.fc.3.weight.factor"] == {"from": 0.99, "to": 0.98, "grid": True}
    raw = checked(json.dumps({**GOOD, "weight_modulation": {"fc.3.bias": [0.0] * 10}}), "grid")
    assert raw.command is None and "takes weight operations, not raw deltas" in raw.errors[0]


def test_a_grid_value_printed_with_fewer_digits_is_that_value_not_a_snap():
    metrics = make_metrics([0.9, 0.91], lr=0.0007071067811865476)  # the prompt shows 7.07e-04
    result = validate_answer(json.dumps({**GOOD, "learning_rate": 0.000707, "dropout": 0.2}), metrics, "grid")
    assert result.command.hyperparameters["learning_rate"] == 0.0007071067811865476 and result.clamped == {}


def test_a_layer_named_twice_takes_its_first_entry_and_is_flagged():
    ops = [
        {"layer": "fc.3.weight", "op": "scale", "factor": 0.98},
        {"layer": "fc.3.weight", "op": "scale", "factor": 1.0},
    ]
    result = checked(json.dumps({**GOOD, "weight_modulation": ops}))
    assert result.errors == [] and [(op.layer, op.value) for op in result.command.weight_ops] == [("fc.3.weight", 0.98)]
    assert result.notes["ambiguous"] == [
        "weight_modulation names 'fc.3.weight' more than once; the first entry is used"
    ]


def test_a_weight_operation_keeps_an_integer_seed_and_replaces_any_other():
    ops = [{"layer": "fc.3.weight", "op": "noise", "scale": 0.01, "seed": 987654321}]
    result = checked(json.dumps({**GOOD, "weight_modulation": ops}))
    assert result.errors == [] and result.command.weight_ops[0].seed == 987654321 and result.clamped == {}
    derived = checked(json.dumps({**GOOD, "weight_modulation": [{**ops[0], "seed": None}]})).command.weight_ops[0].seed
    unseeded = checked(json.dumps({**GOOD, "weight_modulation": [{k: v for k, v in ops[0].items() if k != "seed"}]}))
    assert unseeded.command.weight_ops[0].seed == derived != 987654321
    for bad in (-1, 2**64, 1.5, True, "7"):
        result = checked(json.dumps({**GOOD, "weight_modulation": [{**ops[0], "seed": bad}]}))
        assert result.errors == [] and result.command.weight_ops[0].seed == derived
        assert result.clamped == {"weight_ops.fc.3.weight.seed": {"from": str(bad), "to": derived}}


REGRESSION = make_regression_metrics([60.0, 58.0], lr=1e-3, weight_decay=0.02)


def test_a_min_task_answer_names_its_own_knobs_and_is_clamped_by_them():
    answer = {"learning_rate": 0.05, "dropout": 0.1, "weight_decay": 0.09, "alpha": 0.4, "rationale": "r"}
    result = validate_answer(json.dumps(answer), REGRESSION)
    assert result.errors == []
    assert result.command.hyperparameters == {
        "learning_rate": pytest.approx(3e-3),
        "dropout": 0.1,
        "weight_decay": 0.05,
    }
    assert result.clamped["weight_decay"] == {"from": 0.09, "to": 0.05}
    missing = validate_answer(json.dumps({"learning_rate": 1e-3, "dropout": 0.1, "alpha": 0.4}), REGRESSION)
    assert missing.command is None and "missing required field 'weight_decay'" in missing.errors
    mnist_answer = validate_answer(json.dumps(GOOD), REGRESSION)  # MNIST's fields are not this task's
    assert mnist_answer.command is None


def test_a_min_task_grid_snaps_each_knob_on_its_own_scale():
    assert allowed_ranges(REGRESSION)["weight_decay"] == (pytest.approx(0.0), 0.05)
    assert grid_choices(REGRESSION) == {
        "learning_rate": [0.0005, 0.001, 0.002], "dropout": [0.0, 0.1], "weight_decay": [0.01, 0.02, 0.03],
        "alpha": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    }  # fmt: skip
    # 0.00145 is nearer 0.001 by difference, but nearer 0.002 by ratio (/1.38 against x1.45)
    answer = {"learning_rate": 0.00145, "dropout": 0.04, "weight_decay": 0.026, "alpha": 0.4, "rationale": "r"}
    result = validate_answer(json.dumps(answer), REGRESSION, "grid")
    assert result.command.hyperparameters == {"learning_rate": 0.002, "dropout": 0.0, "weight_decay": 0.03}
    assert set(result.clamped) == {"learning_rate", "dropout", "weight_decay"}


def test_numbers_written_as_strings_are_read_as_numbers_with_a_note():
    # what a held-back server that writes every number as a string sends
    answer = {"dropout": "0.2", "learning_rate": "5e-4", "alpha": "0.4", "rationale": "r",
              "weight_modulation": [{"layer": "fc.3.weight", "op": "scale", "factor": "0.98"}]}  # fmt: skip
    result = checked(json.dumps(answer))
    assert result.errors == [] and result.clamped == {}
    assert result.command.hyperparameters == {"dropout": 0.2, "learning_rate": 5e-4} and result.command.alpha == 0.4
    assert result.command.weight_ops[0].value == 0.98
    assert "['dropout', 'learning_rate', 'alpha'] were written as strings" in result.notes["numbers_as_strings"]


def test_a_typed_proposal_passes_the_same_checks_as_its_text():
    from agents.proposals.check import check_proposal
    from agents.proposals.parse import parse_answer
    from agents.proposals.proposal import Proposal, WeightChange

    proposal = Proposal({"dropout": 0.9, "learning_rate": 0.05}, 0.4, (WeightChange("fc.3.weight", "scale", 1.5),), "r")
    typed = check_proposal(proposal, METRICS)
    parsed = check_proposal(parse_answer(proposal.answer_text(), METRICS).proposal, METRICS)
    assert typed.command == parsed.command and typed.clamped == parsed.clamped
    assert typed.clamped == {"dropout": {"from": 0.9, "to": 0.4}, "learning_rate": {"from": 0.05, "to": pytest.approx(3e-3)},
                             "weight_ops.fc.3.weight.factor": {"from": 1.5, "to": 1.05}}  # fmt: skip
    bad = check_proposal(Proposal({"dropout": 0.2, "learning_rate": -1.0}, 0.4), METRICS)
    assert bad.command is None and bad.errors == [
        "learning_rate=-1 is not a valid setting: it must lie in [1e-06, 0.1]"
    ]
    assert bad.partial == {"dropout": 0.2, "alpha": 0.4, "rationale": ""}


def test_a_proposal_is_recorded_in_the_form_its_policy_would_write():
    from agents.proposals.proposal import Proposal, WeightChange

    expert = Proposal(
        {"dropout": 0.2, "learning_rate": 1e-3}, 0.4, (WeightChange("fc.3.weight", "scale", 0.97, key="factor"),), "r"
    )
    assert json.loads(expert.answer_text())["weight_modulation"] == [
        {"layer": "fc.3.weight", "op": "scale", "factor": 0.97}
    ]
    replayed = Proposal(
        {"dropout": 0.2, "learning_rate": 1e-3}, 0.4, (WeightChange("fc.3.weight", "noise", 0.01, 7),), "r"
    )
    assert json.loads(replayed.answer_text())["weight_modulation"] == {
        "fc.3.weight": {"op": "noise", "value": 0.01, "seed": 7}
    }


def test_null_values_and_an_operation_without_op_are_refused_as_such():
    assert "alpha must be a number, got NoneType" in checked(json.dumps({**GOOD, "alpha": None})).errors[0]
    no_op = checked(json.dumps({**GOOD, "weight_modulation": {"fc.3.bias": {"value": [0.0] * 10}}}))
    assert no_op.command is None and "must have op one of ['noise', 'scale', 'shrink'], got 'None'" in no_op.errors[0]
    null_seed = checked(
        json.dumps(
            {**GOOD, "weight_modulation": [{"layer": "fc.3.weight", "op": "noise", "scale": 0.01, "seed": None}]}
        )
    )
    assert null_seed.errors == [] and null_seed.clamped["weight_ops.fc.3.weight.seed"]["from"] == "None"


def test_a_typed_proposal_with_numpy_values_and_a_knob_the_task_lacks():
    import numpy as np

    from agents.proposals.check import check_proposal
    from agents.proposals.proposal import Proposal

    proposal = Proposal({"dropout": np.float32(0.25), "learning_rate": np.float64(5e-4), "momentum": 0.9}, 0.4)
    result = check_proposal(proposal, METRICS)
    assert result.errors == [] and result.command.hyperparameters == {"dropout": 0.25, "learning_rate": 5e-4}
    assert result.clamped == {"ignored_fields": ["momentum"]}
    assert json.loads(proposal.answer_text())["dropout"] == 0.25
