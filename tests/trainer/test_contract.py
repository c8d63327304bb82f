"""The trainer's checks of a task (``trainer.contract``): knob values against the declaration, and each epoch's
metrics — a broken epoch is a one-line TaskContractError, a diverging metric beside the objective is data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.base import EpochResult
from tests.helpers import REGRESSION_SPEC
from trainer.contract import TaskContractError, check_epoch_result, check_hyperparameters

GOOD = {"train_loss": 0.5, "val_rmse": 55.0}


def test_an_epoch_that_keeps_the_contract_passes_with_its_metrics_as_floats():
    result = EpochResult({**GOOD, "episodes": 3, "val_r2": np.float32(0.25), "train_rmse": np.float64(50.0)}, steps=3)
    checked = check_epoch_result(REGRESSION_SPEC, result, 1)
    assert checked.metrics == {**GOOD, "episodes": 3.0, "val_r2": 0.25, "train_rmse": 50.0} and checked.steps == 3
    assert all(type(v) is float for v in checked.metrics.values())


def test_a_metric_beside_the_objective_may_diverge():
    # A diverging loss (MNIST's val_loss beside a finite val_acc), an RL epoch where no episode finished: data.
    metrics = {**GOOD, "train_loss": math.inf, "train_return_mean": math.nan}
    assert check_epoch_result(REGRESSION_SPEC, EpochResult(metrics), 4).metrics["train_loss"] == math.inf


@pytest.mark.parametrize(
    "metrics, message",
    [
        ({"train_loss": 0.5}, "task 'regression' at epoch 2: its metrics lack the objective 'val_rmse' (it reported "
                              "train_loss)"),
        ({}, "task 'regression' at epoch 2: its metrics lack the objective 'val_rmse' (it reported none)"),
        ({**GOOD, "val_rmse": math.nan}, "task 'regression' at epoch 2: the objective val_rmse is nan (the run "
                                         "diverged, or the task cannot measure it)"),
        ({**GOOD, "val_rmse": -math.inf}, "task 'regression' at epoch 2: the objective val_rmse is -inf"),
        ({**GOOD, "val_rmse": "0.5"}, "task 'regression' at epoch 2: metrics must be numbers, got val_rmse='0.5' (str)"),
        ({**GOOD, "val_r2": None}, "metrics must be numbers, got val_r2=None (NoneType)"),
        ({**GOOD, "converged": True}, "metrics must be numbers, got converged=True (bool)"),
        ({**GOOD, "a": "x", "b": [1.0]}, "metrics must be numbers, got a='x' (str), b=[1.0] (list)"),
    ],
)
def test_an_epoch_that_breaks_the_contract_is_refused_in_one_line(metrics, message):
    with pytest.raises(TaskContractError) as refused:
        check_epoch_result(REGRESSION_SPEC, EpochResult(metrics), 2)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_train_epoch_must_return_an_epoch_result():
    with pytest.raises(TaskContractError, match="train_epoch returned a dict, not an EpochResult"):
        check_epoch_result(REGRESSION_SPEC, GOOD, 1)


def test_knob_values_are_checked_against_the_declaration():
    checked = check_hyperparameters(REGRESSION_SPEC, {"learning_rate": 0.01, "dropout": 0})
    assert checked == {"learning_rate": 0.01, "dropout": 0.0} and type(checked["dropout"]) is float
    with pytest.raises(ValueError, match=r"^dropout=5.0 is outside its bounds \[0.0, 0.9\]$"):
        check_hyperparameters(REGRESSION_SPEC, {"dropout": 5})
    with pytest.raises(ValueError, match="has no hyperparameter 'momentum'"):
        check_hyperparameters(REGRESSION_SPEC, {"momentum": 0.9})
