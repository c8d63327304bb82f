"""The collapse rule on made-up histories: a collapse returns to the best epoch with a lower learning rate; a plateau,
noise, or a run already recovering does not."""

import math

import pytest

from agents.controllers.rules import COLLAPSE_BANDS, HeuristicPolicy, collapse
from tests.helpers import make_metrics, make_regression_metrics


def test_a_collapsed_accuracy_rolls_back_with_the_learning_rate_halved():
    m = make_metrics([0.60, 0.75, 0.80, 0.70], lr=1e-2)  # 10 points below the best, 50 bands of 0.002
    proposal = HeuristicPolicy().propose({"metrics": m})
    assert proposal.rollback is True and proposal.hyperparameters["learning_rate"] == pytest.approx(5e-3)
    assert proposal.rationale.startswith("val_acc collapsed to 0.7000 from its best 0.8000 at epoch 3")
    assert proposal.rationale.endswith("go back to epoch 3; lower the learning rate")


def test_a_collapsed_error_rolls_back_for_a_min_task():
    assert collapse(make_regression_metrics([60.0, 55.0, 80.0])) is not None  # 25 RMSE worse: 50 bands of 0.5


@pytest.mark.parametrize(
    "accuracies",
    [
        [0.60, 0.75, 0.80, 0.80, 0.80],  # a plateau
        [0.60, 0.75, 0.80, 0.79, 0.795],  # noise around the best
        [0.60, 0.75, 0.80, 0.80 - (COLLAPSE_BANDS - 1) * 0.002],  # a fall of less than the collapse bands
        [0.60, 0.75, 0.80, 0.50, 0.70],  # far below the best, but recovering
        [0.60],  # the first epoch: nothing to return to
        [0.60, 0.75, 0.80, 0.85],  # a new best
    ],
)
def test_a_plateau_noise_or_recovery_is_not_a_collapse(accuracies):
    m = make_metrics(accuracies)
    assert collapse(m) is None
    assert HeuristicPolicy().propose({"metrics": m}).rollback is False


def test_a_diverged_training_loss_is_a_collapse_even_near_the_best():
    m = make_metrics([0.60, 0.75, 0.80, 0.79])
    broken = {**m.metrics, "train_loss": math.nan}
    history = [*m.history[:-1], m.history[-1].model_copy(update={"metrics": broken})]
    m = m.model_copy(update={"metrics": broken, "history": history})
    assert collapse(m).startswith("train_loss nan: training diverged after its best 0.8000 at epoch 3")
    assert HeuristicPolicy().propose({"metrics": m}).rollback is True


def test_at_the_learning_rate_floor_a_collapse_rolls_back_alone():
    proposal = HeuristicPolicy().propose({"metrics": make_metrics([0.60, 0.80, 0.50], lr=1e-5)})
    assert proposal.rollback is True and proposal.hyperparameters["learning_rate"] == 1e-5
    assert proposal.rationale.endswith("go back to epoch 2")
