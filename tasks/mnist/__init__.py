"""The paper's task: the CNN of section 2.2 classifying MNIST digits (``tasks.mnist.task.MnistTask``).

This module holds what the command line and the agent need to know about the task without importing
torch: the regimes (training images per regime, a seeded class-stratified draw), the knobs with their
hard bounds and trust region, and where the MNIST cache lives. The data loader is ``tasks.mnist.data``,
the model ``tasks.mnist.model``, the epoch loop ``tasks.mnist.loop``.
"""

from __future__ import annotations

from pathlib import Path

from bus.messages import Hyperparameter, TaskSpec

REGIMES: dict[str, int] = {"full": 60_000, "10pct": 6_000, "1pct": 600, "100": 100, "10": 10}

# The paper's starting point: dropout 0.2, Adam with learning rate 1e-3 (alpha 0.4 is the trainer's).
# Trust region: the learning rate moves at most x3 or /3 per decision, dropout at most 0.2; the grid
# halves / keeps / doubles the learning rate and moves dropout by 0.1.
HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter(
        name="dropout",
        default=0.2,
        low=0.0,
        high=0.9,
        scale="linear",
        step=0.1,
        max_change=0.2,
        description="probability of zeroing each unit of the 128-unit fully connected layer during training",
    ),
    Hyperparameter(
        name="learning_rate",
        default=1e-3,
        low=1e-6,
        high=1e-1,
        scale="log",
        step=2.0,
        max_change=3.0,
        description="Adam's step size",
    ),
)

DESCRIPTION = (
    "A small CNN (two conv layers with max-pooling, a 128-unit fully connected layer with dropout, a "
    "10-way output) trained with Adam to classify handwritten MNIST digits, scored by accuracy on the "
    "10,000 test images (higher is better)."
)
OBJECTIVE, MODE = "val_acc", "max"
NOISE_BAND = 0.002  # |change in validation accuracy| below 0.2 points is noise, not an effect
DEFAULT_REGIME, DEFAULT_EPOCHS = "1pct", 30

# What the agent is told about the task (MnistTask.spec() returns the same).
SPEC = TaskSpec(
    name="mnist",
    description=DESCRIPTION,
    objective=OBJECTIVE,
    mode=MODE,
    noise_band=NOISE_BAND,
    hyperparameters=list(HYPERPARAMETERS),
)


def default_data_dir() -> Path:
    """``~/.cache/reflectnet/mnist``: the converted MNIST files (tasks.mnist.data)."""
    return Path.home() / ".cache" / "reflectnet" / "mnist"
