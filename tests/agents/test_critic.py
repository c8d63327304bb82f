import pytest

from agents.nodes.critic import critic
from tests.helpers import make_command, make_metrics, make_reflection, make_regression_metrics


def test_small_changes_are_approved_untouched():
    command = make_command(dropout=0.25, learning_rate=8e-4)
    update = critic({"metrics": make_metrics([0.8, 0.85]), "command": command})
    assert "command" not in update and update["notes"][0]["action"] == "approve"


def test_repeating_a_harmful_change_is_vetoed():
    harmful = make_reflection(2, 0.85, 0.83, "harmful")
    previous = make_command(dropout=0.3, learning_rate=1e-3)
    metrics = make_metrics(
        [0.80, 0.85, 0.83],
        dropouts=[0.2, 0.2, 0.3],
        dropout=0.3,
        previous_command=previous,
        previous_reflection=harmful,
    )
    update = critic({"metrics": metrics, "command": make_command(dropout=0.33, learning_rate=1e-3)})
    assert update["command"].hyperparameters == {"dropout": 0.3, "learning_rate": 1e-3}
    assert update["notes"] == [
        {
            "node": "critic", "action": "veto", "field": "dropout", "from": 0.33, "to": 0.3,
            "reason": "the last change of dropout in this direction was judged harmful",
        }
    ]  # fmt: skip
    # the other direction is no repeat
    update = critic({"metrics": metrics, "command": make_command(dropout=0.27, learning_rate=1e-3)})
    assert update["notes"][0]["action"] == "approve"


def test_big_changes_are_softened_by_the_knobs_scale():
    update = critic({"metrics": make_metrics([0.8, 0.85]), "command": make_command(dropout=0.4, learning_rate=3e-3)})
    assert update["command"].hyperparameters == {"dropout": 0.25, "learning_rate": pytest.approx((3e-3 * 1e-3) ** 0.5)}
    assert [(n["field"], n["reason"]) for n in update["notes"]] == [
        ("dropout", "dropout moves at most 0.05 per epoch"),
        ("learning_rate", "a learning_rate change by more than x1.5 in one epoch is risky"),
    ]
    assert update["command"].rationale.endswith("[critic: dropout moves at most 0.05 per epoch; a learning_rate "
                                                 "change by more than x1.5 in one epoch is risky]")  # fmt: skip


def test_a_min_task_knobs_are_criticised_by_name():
    # weight_decay's step is 0.01: it moves at most 0.005 per epoch
    metrics = make_regression_metrics([60.0, 58.0], weight_decay=0.01)
    update = critic({"metrics": metrics, "command": make_command(learning_rate=1e-3, dropout=0.0, weight_decay=0.03)})
    assert update["command"].hyperparameters == {"learning_rate": 1e-3, "dropout": 0.0, "weight_decay": 0.015}
    harmful = make_reflection(2, 58.0, 59.0, "harmful", objective="val_rmse")
    metrics = make_regression_metrics(
        [60.0, 58.0, 59.0], lr=5e-4, lrs=[1e-3, 1e-3, 5e-4], previous_reflection=harmful,
        previous_command=make_command(learning_rate=5e-4, dropout=0.0, weight_decay=0.0),
    )  # fmt: skip
    update = critic({"metrics": metrics, "command": make_command(learning_rate=4e-4, dropout=0.0, weight_decay=0.0)})
    assert update["command"].hyperparameters["learning_rate"] == 5e-4
    assert [(n["action"], n["field"]) for n in update["notes"]] == [("veto", "learning_rate")]
