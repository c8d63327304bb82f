"""The trainer holds every task to its declaration (``tasks.base.Task``): the knob values it hands a task and the
metrics a task hands back.

Knobs: every value the trainer sets — the run's initial values, the agent's command, a checkpoint's — goes
through :func:`set_hyperparameters`, which checks each one with the declared knob's
:meth:`~bus.task_spec.Hyperparameter.check` first; tasks apply values and check nothing. The trainer never
trusts the bus: the agent's checks refuse values outside the bounds already, so a refusal here means a defect or a
foreign peer.

Metrics: after each epoch, :func:`check_epoch_result` refuses a result whose objective is missing, NaN or
infinite, or whose metrics include something that is not a number (a string ``"0.5"``, None, a bool). Such an
epoch is never recorded: the run fails with the reason. Other metrics may be NaN or infinite — a diverging
loss beside a finite accuracy, no finished episode in an RL epoch — and are recorded as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from numbers import Real

from bus.task_spec import TaskSpec
from tasks.base import EpochResult, Task


class TaskContractError(RuntimeError):
    """A task broke its declaration: the message is one line naming the task, the epoch and what was wrong."""


def check_hyperparameters(spec: TaskSpec, values: Mapping[str, float]) -> dict[str, float]:
    """``values`` as floats, each checked against its declared knob. ValueError (one line, naming the knob) for a
    name the task does not declare or a value outside its hard bounds (NaN included)."""
    checked = {}
    for name, value in values.items():
        try:
            knob = spec.knob(name)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        checked[name] = knob.check(value)
    return checked


def set_hyperparameters(task: Task, values: Mapping[str, float]) -> None:
    """Hand the task ``values`` (some or all of its knobs) after checking every one (:func:`check_hyperparameters`);
    a refused value leaves the task untouched."""
    task.set_hyperparameters(check_hyperparameters(task.spec(), values))


def check_epoch_result(spec: TaskSpec, result: EpochResult, epoch: int) -> EpochResult:
    """``result`` with its metrics as Python floats if they keep the contract; TaskContractError saying what broke
    it otherwise: a metric that is not a real number (a bool is not), or an objective that is missing, NaN or
    infinite."""
    where = f"task {spec.name!r} at epoch {epoch}"
    if not isinstance(result, EpochResult):
        raise TaskContractError(f"{where}: train_epoch returned a {type(result).__name__}, not an EpochResult")
    metrics = result.metrics
    if not isinstance(metrics, Mapping):
        raise TaskContractError(f"{where}: its metrics are a {type(metrics).__name__}, not a dict of numbers")
    not_numbers = {name: value for name, value in metrics.items() if not _is_number(value)}
    if not_numbers:
        shown = ", ".join(f"{name}={value!r} ({type(value).__name__})" for name, value in not_numbers.items())
        raise TaskContractError(f"{where}: metrics must be numbers, got {shown}")
    if spec.objective not in metrics:
        raise TaskContractError(
            f"{where}: its metrics lack the objective {spec.objective!r} (it reported {', '.join(metrics) or 'none'})"
        )
    objective = float(metrics[spec.objective])
    if not math.isfinite(objective):
        raise TaskContractError(f"{where}: the objective {spec.objective} is {objective} (the run diverged, or the "
                                "task cannot measure it)")  # fmt: skip
    return replace(result, metrics={name: float(value) for name, value in metrics.items()})


def _is_number(value: object) -> bool:
    # numbers.Real takes Python and NumPy floats and ints; a bool is an int to Python but never a measurement.
    return isinstance(value, Real) and not isinstance(value, bool)
