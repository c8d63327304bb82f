import json

import pytest

from agents.controllers.replay import ReplayPolicy
from agents.controllers.rules import GAP_NOISE_BANDS, HeuristicPolicy, PlateauPolicy, gap_threshold
from bus.messages import WeightOp
from tasks.mnist import SPEC as MNIST_SPEC
from tests.helpers import (
    REGRESSION_SPEC,
    make_command,
    make_metrics,
    make_reflection,
    make_regression_metrics,
)


def propose(metrics, policy=None) -> dict:
    return json.loads((policy or HeuristicPolicy()).propose({"metrics": metrics}).answer_text())


def test_plateau_halves_the_learning_rate():
    command = propose(make_metrics([0.90, 0.93, 0.92, 0.925]))
    assert command["learning_rate"] == 5e-4 and command["dropout"] == 0.2
    assert command["rationale"] == (
        "validation plateau: no new best for 2 epochs (best 0.9300 at epoch 2); lower the learning rate"
    )


def test_widening_gap_adds_dropout():
    command = propose(make_metrics([0.85, 0.85], train_accs=[0.90, 0.95]))  # no new best, the gap widens
    assert command["dropout"] == 0.3 and command["learning_rate"] == 1e-3
    assert command["rationale"] == "train/val gap widened from 0.0500 to 0.1000: more dropout"


def test_a_gap_widening_while_the_objective_still_improves_is_not_overfitting():
    # issue 19: with 100 MNIST images the gap widens for the first 15 epochs while val_acc climbs; dropout raised
    # on it every epoch reached 0.5 by epoch 10 and starved the network
    command = propose(make_metrics([0.80, 0.85], train_accs=[0.85, 0.95]))
    assert command["dropout"] == 0.2 and command["rationale"] == "steady: keep the current hyperparameters"


def test_the_gap_threshold_is_fifteen_noise_bands_which_is_mnists_original_three_points():
    assert gap_threshold(MNIST_SPEC) == 0.03 and GAP_NOISE_BANDS * REGRESSION_SPEC.noise_band == 7.5
    # a gap that widens but stays below 0.03 is no reason for more dropout
    assert propose(make_metrics([0.85, 0.85], train_accs=[0.86, 0.875]))["dropout"] == 0.2
    assert propose(make_metrics([0.85, 0.85], train_accs=[0.86, 0.885]))["dropout"] == 0.3


def test_steady_gains_keep_everything():
    command = propose(make_metrics([0.80, 0.85, 0.88], train_accs=[0.82, 0.86, 0.885]))
    assert command == {
        "dropout": 0.2, "learning_rate": 1e-3, "alpha": 0.4, "rationale": "steady: keep the current hyperparameters",
    }  # fmt: skip


def test_after_a_change_the_plateau_waits_its_epochs_before_lowering_again():
    # issue 19: the plateau counted only from the best epoch, so once on a plateau the rule halved the learning
    # rate every epoch down to the floor; counted from the change too (ReduceLROnPlateau's reset), it waits
    flat = [0.90, 0.93, 0.93, 0.93, 0.93]
    just_lowered = make_metrics(flat, lr=5e-4, lrs=[1e-3, 1e-3, 1e-3, 1e-3, 5e-4])
    assert propose(just_lowered)["learning_rate"] == 5e-4
    two_epochs_on = make_metrics([*flat, 0.93], lr=5e-4, lrs=[1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 5e-4])
    assert propose(two_epochs_on)["learning_rate"] == 2.5e-4


def test_a_harmful_verdict_holds_still_even_on_a_plateau():
    harmful = make_reflection(3, 0.93, 0.92, "harmful")
    command = propose(make_metrics([0.90, 0.93, 0.93, 0.92], previous_reflection=harmful))
    assert command["learning_rate"] == 1e-3 and "harmful" in command["rationale"]


def test_min_mode_plateau_counts_the_lowest_error_as_best():
    # val_rmse falls to 55 at epoch 2 and stays above it: a plateau of 2 epochs
    command = propose(make_regression_metrics([60.0, 55.0, 56.0, 55.5]))
    assert command["learning_rate"] == 5e-4 and (command["dropout"], command["weight_decay"]) == (0.0, 0.0)
    assert "best 55.00 at epoch 2" in command["rationale"]
    # still falling: no plateau (in max mode the same numbers would be one)
    assert propose(make_regression_metrics([60.0, 58.0, 57.0, 56.0]))["learning_rate"] == 1e-3


def test_min_mode_gap_is_validation_minus_train_and_regularises_with_dropout_then_weight_decay():
    # val - train: 4 then 9, beyond 15 noise bands (7.5) and widening
    metrics = make_regression_metrics([59.0, 59.0], train_rmses=[55.0, 50.0])
    command = propose(metrics)
    assert (command["dropout"], command["weight_decay"], command["learning_rate"]) == (0.1, 0.0, 1e-3)
    assert command["rationale"] == "train/val gap widened from 4.00 to 9.00: more dropout"
    capped = make_regression_metrics([59.0, 59.0], train_rmses=[55.0, 50.0], dropout=0.5, weight_decay=0.01)
    assert (propose(capped)["dropout"], propose(capped)["weight_decay"]) == (0.5, 0.02)
    no_dropout = REGRESSION_SPEC.model_copy(
        update={"hyperparameters": [k for k in REGRESSION_SPEC.hyperparameters if k.name != "dropout"]}
    )
    metrics = make_regression_metrics([59.0, 59.0], train_rmses=[55.0, 50.0], weight_decay=0.02, spec=no_dropout)
    assert propose(metrics) == {
        "learning_rate": 1e-3, "weight_decay": 0.03, "alpha": 0.4,
        "rationale": "train/val gap widened from 4.00 to 9.00: more weight_decay",
    }  # fmt: skip
    # a gap of 7 (below 7.5) is not overfitting yet
    assert propose(make_regression_metrics([60.0, 59.0], train_rmses=[56.0, 52.0]))["dropout"] == 0.0


def test_a_task_without_the_knobs_holds():
    only_dropout = REGRESSION_SPEC.model_copy(
        update={"hyperparameters": [k for k in REGRESSION_SPEC.hyperparameters if k.name == "dropout"]}
    )
    metrics = make_regression_metrics([60.0, 55.0, 56.0, 55.5], spec=only_dropout)
    assert propose(metrics)["rationale"].startswith("steady")
    held = propose(metrics, PlateauPolicy())
    assert held["dropout"] == 0.0 and "has no learning_rate knob" in held["rationale"]


def test_plateau_is_torchs_reduce_lr_on_plateau_replayed_over_the_objective():
    import torch

    # val_acc improves twice, then 3 epochs without improvement (mode max).
    val_accs = [0.80, 0.85, 0.84, 0.845, 0.83, 0.84]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2, min_lr=1e-5)
    for acc in val_accs:
        reference.step(acc)
    command = propose(make_metrics(val_accs), PlateauPolicy())
    assert command["learning_rate"] == optimizer.param_groups[0]["lr"] == 5e-4
    assert (command["dropout"], command["alpha"]) == (0.2, 0.4) and "1 reduction(s)" in command["rationale"]
    assert "best val_acc 0.8500" in command["rationale"] and "mode=max" in command["rationale"]
    assert propose(make_metrics(val_accs[:4]), PlateauPolicy())["learning_rate"] == 1e-3


def test_min_mode_plateau_lowers_the_learning_rate_when_the_error_stops_falling():
    falling = [60.0, 58.0, 57.0, 56.0, 55.0, 54.0]
    assert propose(make_regression_metrics(falling), PlateauPolicy())["learning_rate"] == 1e-3
    stalled = [60.0, 55.0, 55.5, 56.0, 55.2, 55.1]  # best 55 at epoch 2, then 4 epochs above it
    command = propose(make_regression_metrics(stalled), PlateauPolicy())
    assert command["learning_rate"] == 5e-4 and "best val_rmse 55.00" in command["rationale"]
    assert (command["dropout"], command["weight_decay"]) == (0.0, 0.0)


def test_replay_answers_the_recorded_command_with_its_seeds_or_holds():
    noise = WeightOp(layer="fc.3.weight", op="noise", value=0.01, seed=12345)
    recorded = make_command(dropout=0.3, learning_rate=5e-4, alpha=0.6, rationale="r", weight_ops=[noise])
    policy = ReplayPolicy({"run-test": {2: recorded}})
    assert propose(make_metrics([0.8, 0.85]), policy) == {
        "dropout": 0.3, "learning_rate": 5e-4, "alpha": 0.6, "rationale": "r",
        "weight_modulation": {"fc.3.weight": {"op": "noise", "value": 0.01, "seed": 12345}},
    }  # fmt: skip
    held = propose(make_metrics([0.8, 0.85, 0.86]), policy)
    assert (held["dropout"], held["learning_rate"], held["alpha"]) == (0.2, 1e-3, 0.0)
    assert held["rationale"].startswith("replay: no command was recorded for epoch 3 of run 'run-test'")


@pytest.mark.parametrize("policy", [HeuristicPolicy(), PlateauPolicy()])
def test_commands_name_every_knob_of_the_task_in_its_order(policy):
    text = policy.propose({"metrics": make_regression_metrics([60.0, 58.0])}).answer_text()
    assert list(json.loads(text)) == ["learning_rate", "dropout", "weight_decay", "alpha", "rationale"]
