"""MnistTask itself: its declarations, what setup builds from the data, where the knobs go, what an epoch reports,
and which checkpoints it refuses. (The contract every task keeps is tests/tasks/test_contract.py; the loop, model
and data have their own tests.) Real MNIST from the cache, the 10- and 100-image regimes, validation eager."""

from __future__ import annotations

import math

import pytest
import torch

from tasks import mnist
from tasks.mnist.model import ReflectCNN
from tasks.mnist.task import CHECKPOINT_FORMAT, MnistTask
from trainer.blend import BlendedOptimizer

CPU = torch.device("cpu")
PARAMETERS = ["conv.0.weight", "conv.0.bias", "conv.3.weight", "conv.3.bias", "fc.0.weight", "fc.0.bias",
              "fc.3.weight", "fc.3.bias"]  # fmt: skip


@pytest.fixture
def task(mnist) -> MnistTask:  # the conftest fixture converts MNIST into the cache once per session
    task = MnistTask(compile_eval=False)
    task.setup("10", 0, CPU)
    return task


def test_declarations_are_the_papers_and_what_the_agent_is_told():
    assert MnistTask.spec() == mnist.SPEC
    assert (MnistTask.objective, MnistTask.mode, MnistTask.noise_band) == ("val_acc", "max", 0.002)
    assert MnistTask.regimes == {"full": 60_000, "10pct": 6_000, "1pct": 600, "100": 100, "10": 10}
    assert (MnistTask.default_regime, MnistTask.default_epochs) == ("1pct", 30)
    assert {k.name: (k.default, k.low, k.high) for k in MnistTask.hyperparameters} == {
        "dropout": (0.2, 0.0, 0.9), "learning_rate": (1e-3, 1e-6, 1e-1),
    }  # fmt: skip


def test_options_are_checked_and_nothing_is_built_before_setup():
    with pytest.raises(ValueError, match="batch_size must be positive, got batch_size=0"):
        MnistTask(batch_size=0)
    fresh = MnistTask()
    with pytest.raises(RuntimeError, match="call setup"):
        fresh.model
    with pytest.raises(RuntimeError, match="call setup"):
        fresh.optimizer
    with pytest.raises(ValueError, match=r"unknown regime '5' for task 'mnist'; known: \['full'"):
        fresh.setup("5", 0, CPU)


def test_setup_draws_one_image_per_class_and_builds_the_cnn_with_adam(task):
    assert task.train_x.shape == (10, 1, 28, 28) and task.train_x.is_contiguous(memory_format=torch.channels_last)
    assert sorted(task.train_y.tolist()) == list(range(10))  # class-stratified
    assert task.val_x.shape == (10_000, 1, 28, 28) and len(task.val_y) == 10_000  # validation: the test set
    assert isinstance(task.model, ReflectCNN) and [n for n, _ in task.model.named_parameters()] == PARAMETERS
    assert isinstance(task.optimizer, BlendedOptimizer) and isinstance(task.optimizer.inner, torch.optim.Adam)
    assert task.forward is task.model  # compile_eval=False: validation runs eager
    assert task.steps_per_epoch() == 1
    assert task.hyperparameter_values() == {"dropout": 0.2, "learning_rate": 1e-3}
    assert task.model.dropout == 0.2 and [g["lr"] for g in task.optimizer.param_groups] == [1e-3]


def test_setup_reports_where_the_data_came_from(mnist):
    events = []
    task = MnistTask(compile_eval=False)
    task.set_event_sink(lambda level, event, data: events.append((level, event, data)))
    task.setup("10", 0, CPU)
    assert [(level, event) for level, event, _ in events] == [("info", "data_loaded")]
    assert events[0][2] == {"source": mnist.source, "device": "cpu"}


def test_the_knobs_go_into_adam_and_the_dropout_layer(task):
    task.set_hyperparameters({"learning_rate": 4e-3})
    assert [g["lr"] for g in task.optimizer.param_groups] == [4e-3] and task.model.dropout == 0.2
    task.set_hyperparameters({"dropout": 0.5})
    assert task.model.dropout == 0.5 and task.hyperparameter_values() == {"dropout": 0.5, "learning_rate": 4e-3}


def test_an_epoch_reports_training_and_validation_and_per_class_accuracy(mnist):
    task = MnistTask(compile_eval=False, batch_size=32)
    task.setup("100", 0, CPU)
    assert task.steps_per_epoch() == math.ceil(100 / 32) == 4
    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    result = task.train_epoch(1)
    assert set(result.metrics) == {"train_loss", "train_acc", "val_loss", "val_acc"} and result.steps == 4
    assert all(0.0 <= result.metrics[m] <= 1.0 for m in ("train_acc", "val_acc"))
    assert result.metrics["train_loss"] > 0 and result.metrics["val_loss"] > 0
    per_class = result.vectors["per_class_val_acc"]
    counts = torch.bincount(mnist.test_labels, minlength=10).tolist()
    # The per-class accuracies, weighted by the classes' sizes in the test set, give the accuracy.
    assert sum(a * n for a, n in zip(per_class, counts)) / 10_000 == pytest.approx(result.metrics["val_acc"], abs=1e-6)
    assert list(result.grad_norms) == PARAMETERS and all(v > 0 for v in result.grad_norms.values())
    assert all(not torch.equal(p, before[n]) for n, p in task.model.named_parameters())  # Adam moved every one


def test_a_checkpoint_names_its_task_regime_and_seed_and_is_refused_elsewhere(task, mnist):
    tensors, meta = task.checkpoint_state()
    assert (meta["format"], meta["regime"], meta["seed"]) == (CHECKPOINT_FORMAT, "10", 0)
    assert meta["hyperparameters"] == {"dropout": 0.2, "learning_rate": 1e-3} and "rng.order" in tensors
    assert {f"model.{n}" for n in PARAMETERS} <= set(tensors)
    other = MnistTask(compile_eval=False)
    other.setup("10", 1, CPU)
    with pytest.raises(ValueError, match="checkpoint is for regime '10' seed 0, this task is set up for '10' seed 1"):
        other.restore_state(tensors, meta)
    with pytest.raises(ValueError, match="not a mnist checkpoint: format 'reflectnet.tasks.diabetes/1'"):
        task.restore_state(tensors, {**meta, "format": "reflectnet.tasks.diabetes/1"})
