"""The prompt and the command schema, from the task the message carries."""

import pytest

from agents.prompts import command_schema, display_metrics, preamble, render_prompt
from bus.messages import TaskSpec
from tasks.mnist import SPEC as MNIST_SPEC
from tests.helpers import (
    REGRESSION_SPEC,
    make_command,
    make_metrics,
    make_reflection,
    make_regression_metrics,
    metrics_from,
)


def lines_after(prompt: str, start: str) -> list[str]:
    lines = prompt.splitlines()
    return lines[lines.index(start) + 1 :]


def test_the_mnist_prompt_shows_the_task_knobs_history_and_trends():
    previous = make_command(dropout=0.25, learning_rate=5e-4, alpha=0.3, rationale="val acc stalls")
    harmful = make_reflection(2, 0.85, 0.83, "harmful", text="val_acc fell")
    metrics = make_metrics([0.80, 0.85, 0.83], previous_command=previous, previous_reflection=harmful)
    prompt = render_prompt(metrics)
    assert f"Task: {MNIST_SPEC.description}" in prompt
    assert "Objective: val_acc, higher is better. Regime 1pct: 600 training examples." in prompt
    assert "lower learning_rate when val_acc stalls, raise dropout when the train/val gap widens" in prompt
    assert lines_after(prompt, "Hyperparameters:")[:2] == [
        "- dropout: probability of zeroing each unit of the 128-unit fully connected layer during training",
        "- learning_rate: Adam's step size",
    ]
    assert lines_after(prompt, "Epoch 3 of 20 just finished.")[:6] == [
        "epoch: val_acc train_acc val_loss train_loss | dropout learning_rate alpha",
        "1: 0.8 0.81 0.2 0.19 | 0.2 0.001 0.4",
        "2: 0.85 0.86 0.15 0.14 | 0.2 0.001 0.4",
        "3: 0.83 0.84 0.17 0.16 | 0.2 0.001 0.4",
        (
            "Best (highest) val_acc 0.8500 at epoch 2 (1 epochs ago). Train/val gap +0.0100 (previous epoch +0.0100; "
            "positive: train_acc is better than val_acc)."
        ),
        "Gradient/weight norms: conv.0.weight 0.1/10, conv.3.weight 0.1/10, fc.0.weight 0.1/10, fc.3.weight 0.1/10",
    ]
    assert (
        "Current values, in the range allowed now: dropout 0.2 in [0, 0.4], learning_rate 0.001 in "
        "[0.000333, 0.003], alpha 0.4 in [0, 1]." in prompt
    )
    assert "That was your previous command: 'val acc stalls'. Verdict on it: harmful (val_acc fell)." in prompt
    assert "Verdict" not in render_prompt(metrics, feed_reflection=False)


def test_the_fixed_part_comes_first_and_stays_the_same_all_run():
    first, later = make_metrics([0.8]), make_metrics([0.8, 0.85, 0.83, 0.9], lr=5e-4, dropout=0.3)
    assert render_prompt(first).startswith(preamble(first) + "\n\nEpoch 1 of 20")
    assert preamble(first) == preamble(later)
    assert len(render_prompt(later)) < 2400  # about 800 tokens: the embedded model has 2048


def test_a_min_task_prompt_speaks_of_its_own_objective_and_knobs_only():
    previous = make_command(learning_rate=1e-3, dropout=0.0, weight_decay=0.0, rationale="keep")
    metrics = make_regression_metrics([60.0, 58.0, 57.5, 57.8], previous_command=previous)
    prompt = render_prompt(metrics, command_space="grid")
    for mnist_word in ("MNIST", "CNN", "val_acc", "fc.3", "images", "accuracy"):
        assert mnist_word not in prompt
    assert "Objective: val_rmse, lower is better. Regime 1pct: 353 training examples." in prompt
    assert "- weight_decay: L2 penalty coefficient" in prompt
    assert lines_after(prompt, "Epoch 4 of 20 just finished.")[:6] == [
        "epoch: val_rmse train_rmse val_r2 train_r2 | learning_rate dropout weight_decay alpha",
        "1: 60 58 0.4 0.42 | 0.001 0 0 0.4",
        "2: 58 56 0.42 0.44 | 0.001 0 0 0.4",
        "3: 57.5 55.5 0.425 0.445 | 0.001 0 0 0.4",
        "4: 57.8 55.8 0.422 0.442 | 0.001 0 0 0.4",
        (
            "Best (lowest) val_rmse 57.50 at epoch 3 (1 epochs ago). Train/val gap +2.00 (previous epoch +2.00; "
            "positive: train_rmse is better than val_rmse)."
        ),
    ]
    assert '"weight_decay":{"enum":[0.0,0.01]}' in prompt and '"layer": "net.3.weight"' in prompt


@pytest.mark.parametrize("space", ["free", "grid"])
def test_the_schema_has_one_field_per_knob_then_alpha(space):
    schema = command_schema(make_regression_metrics([60.0, 58.0], lr=2e-3, weight_decay=0.02), space)
    assert schema["required"] == ["learning_rate", "dropout", "weight_decay", "alpha", "rationale"]
    assert list(schema["properties"]) == [
        "learning_rate", "dropout", "weight_decay", "alpha", "weight_modulation", "rollback", "rationale",
    ]  # fmt: skip
    assert schema["properties"]["rollback"] == {"type": "boolean"}
    lr = schema["properties"]["learning_rate"]
    if space == "free":
        assert (lr["minimum"], lr["maximum"]) == (pytest.approx(2e-3 / 3), pytest.approx(6e-3))
        assert schema["properties"]["weight_decay"] == {"type": "number", "minimum": 0.0, "maximum": 0.05}
    else:
        assert lr == {"enum": [0.001, 0.002, 0.004]}
        assert schema["properties"]["alpha"] == {"enum": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]}


def test_other_metrics_prefer_the_objectives_counterpart_then_train_and_held_out_pairs():
    spec = TaskSpec(
        name="rl", description="d", objective="eval_return_mean", mode="max", noise_band=10.0,
        hyperparameters=[REGRESSION_SPEC.knob("learning_rate")],
    )  # fmt: skip
    scores = {
        "eval_return_mean": 200.0, "eval_return_std": 20.0, "eval_episode_length_mean": 200.0,
        "train_return_mean": 150.0, "train_episode_length_mean": 150.0, "episodes": 12.0,
    }  # fmt: skip
    metrics = metrics_from(spec, [scores], {"learning_rate": 1e-3})
    assert display_metrics(metrics) == ["train_return_mean", "eval_episode_length_mean", "train_episode_length_mean"]
    assert "Best (highest) eval_return_mean 200 at epoch 1" in render_prompt(metrics)
    assert "gap" not in render_prompt(metrics)  # no val_ metric: no generalization gap
    assert display_metrics(make_metrics([0.8])) == ["train_acc", "val_loss", "train_loss"]
