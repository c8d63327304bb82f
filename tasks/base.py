"""The task seam: what ReflectNet trains and steers, behind one small contract.

A :class:`Task` owns its data (or environment) and its regimes — data budgets — builds its model and
optimizer, trains one epoch (or one chunk of environment steps), evaluates, and returns named
metrics. It declares its objective metric and direction (``mode``: ``"max"`` or ``"min"``, as Ray
Tune and Lightning's ``EarlyStopping`` take ``metric``/``mode``), the hyperparameters an agent may set
between epochs with their hard bounds and grid (:class:`Hyperparameter`), and a short plain-language
description that prompts use. Everything an agent knows about a task comes from these declarations;
no other part of ReflectNet knows what the task is.

Weight modulation goes through :class:`trainer.blend.BlendedOptimizer`, a wrapper around the task's
``torch.optim.Optimizer`` — so a task whose training loop lives in a library (Stable-Baselines3)
gets the alpha-blended step the same way as a hand-written loop.
"""

from __future__ import annotations

import contextlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from bus.messages import Hyperparameter, Mode, TaskSpec

EventSink = Callable[[str, str, dict], None]  # (level, event, data)

__all__ = [
    "DataUnavailableError", "EpochResult", "Hyperparameter", "Mode", "Task", "TaskSpec", "cpu_copy", "setup_task",
    "takes_order_seed", "torch_threads",
]  # fmt: skip


class DataUnavailableError(RuntimeError):
    """A task's data cannot be had (no source works, a cache is damaged beyond repair). The message is one
    line saying which file and what the user can do; the trainer prints it and exits with code 4, where a
    resume cannot help."""


@dataclass
class EpochResult:
    """What one epoch (or chunk of environment steps) of training measured.

    ``metrics``: named scalars, training and evaluation, the objective among them.
    ``grad_norms``: per named parameter, the mean over the epoch's optimizer steps of its gradient's L2 norm.
    ``vectors``: named per-class or per-episode lists (e.g. ``per_class_val_acc``), optional.
    """

    metrics: dict[str, float]
    grad_norms: dict[str, float] = field(default_factory=dict)
    vectors: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0  # optimizer steps taken


class Task(ABC):
    """A trainable, steerable task. Subclasses set the class attributes and implement the methods.

    Life cycle, driven by the trainer process: ``setup(regime, seed, device)`` once; then per epoch
    ``train_epoch(epoch)`` (which evaluates too) and, between epochs, ``set_hyperparameters`` and
    ``optimizer.set_blend``; ``checkpoint_state`` / ``restore_state`` around a resume.

    The order seed (optional): a task whose ``setup`` also takes the keyword ``order_seed`` (an int, or None for
    ``seed``) draws from it what varies between repeats of one experiment — batch or episode order, dropout
    masks, training-environment resets — while the data subset and the initial weights stay on ``seed``. The A/A
    arm (the noise floor) is the baseline with only this seed changed; the trainer passes it through
    :func:`setup_task`, and only when it is set, so a task without the keyword works as before and cannot run an
    A/A arm (the orchestrator says so before training).
    """

    name: ClassVar[str]
    description: ClassVar[str]  # one or two sentences for the prompt: what is trained, on what, by what
    objective: ClassVar[str]  # the metric in EpochResult.metrics that decides what is better
    mode: ClassVar[Mode]
    noise_band: ClassVar[float]  # |change in the objective| between epochs that is noise, not an effect
    regimes: ClassVar[dict[str, int]]  # data budget name -> training examples (or environment steps)
    budget_unit: ClassVar[str] = "training examples"  # what a regime's number counts, for prompts
    default_regime: ClassVar[str]
    default_epochs: ClassVar[int]
    hyperparameters: ClassVar[tuple[Hyperparameter, ...]]
    # Metrics shown beside the objective in result tables, at the best epoch (a metric ``ols_<name>`` or
    # ``ref_<name>`` is shown as the reference's value): e.g. R² for a task whose objective is RMSE.
    summary_metrics: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def setup(self, regime: str, seed: int, device: torch.device) -> None:
        """Load data (or make environments), build the model and its optimizer, seeded by ``seed``;
        raises ValueError for an unknown regime. May take a keyword ``order_seed`` (see the class docstring)."""

    @property
    @abstractmethod
    def model(self) -> torch.nn.Module:
        """The network whose named parameters an agent may modulate."""

    @property
    @abstractmethod
    def optimizer(self):
        """The task's :class:`trainer.blend.BlendedOptimizer`."""

    @abstractmethod
    def train_epoch(self, epoch: int) -> EpochResult:
        """Train one epoch (or chunk) and evaluate; ``epoch`` counts from 1."""

    @abstractmethod
    def set_hyperparameters(self, values: dict[str, float]) -> None:
        """Use ``values`` (names from :attr:`hyperparameters`, already validated) from the next epoch on."""

    @abstractmethod
    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything needed to continue after this epoch: tensors (saved with safetensors, no pickle)
        and JSON-able metadata."""

    @abstractmethod
    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """The inverse of :meth:`checkpoint_state`, after :meth:`setup`."""

    @abstractmethod
    def hyperparameter_values(self) -> dict[str, float]:
        """The knob values the next :meth:`train_epoch` uses, one per declared hyperparameter."""

    def set_event_sink(self, sink: "EventSink | None") -> None:
        """Where :meth:`emit` sends events: the trainer passes its logger (events land in the ``events``
        table); without a sink events are dropped."""
        self._event_sink = sink

    def emit(self, level: str, event: str, **data) -> None:
        """Report something worth recording (a repaired data file, a compile fall-back): ``level`` is
        ``info``/``warning``/``error``, ``event`` a snake_case name, ``data`` JSON-able values."""
        sink = getattr(self, "_event_sink", None)
        if sink is not None:
            sink(level, event, data)

    def steps_per_epoch(self) -> int | None:
        """Optimizer steps the next :meth:`train_epoch` will take, after :meth:`setup`: the trainer passes it
        to ``optimizer.set_blend`` so that an epoch's deltas add up over exactly that many steps. This
        default, None, says the task cannot tell ahead; the trainer then uses the last ``EpochResult.steps``
        (before the first epoch there is no command, so no delta to spread)."""
        return None

    @classmethod
    def spec(cls) -> TaskSpec:
        """The declarations as they travel to the agent in every ``EpochMetrics``."""
        return TaskSpec(
            name=cls.name,
            description=cls.description,
            objective=cls.objective,
            mode=cls.mode,
            budget_unit=cls.budget_unit,
            noise_band=cls.noise_band,
            hyperparameters=list(cls.hyperparameters),
            summary_metrics=list(cls.summary_metrics),
        )

    @classmethod
    def hyperparameter(cls, name: str) -> Hyperparameter:
        """The declared knob ``name``; KeyError names the known ones."""
        return cls.spec().knob(name)

    @classmethod
    def better(cls, a: float, b: float) -> bool:
        """Whether objective value ``a`` is better than ``b`` under :attr:`mode`."""
        return cls.spec().better(a, b)


def takes_order_seed(task: Task | type[Task]) -> bool:
    """Whether ``task`` (an instance or its class) can vary its training order apart from its data and initial
    weights: its ``setup`` accepts the keyword ``order_seed``."""
    try:
        parameters = inspect.signature(task.setup).parameters.values()
    except (TypeError, ValueError):  # a setup without a signature (a C callable) declares no such keyword
        return False
    return any(p.name == "order_seed" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in parameters)


def setup_task(task: Task, regime: str, seed: int, device: torch.device, order_seed: int | None = None) -> None:
    """``task.setup(regime, seed, device)``, with ``order_seed=`` only when it is set (a task that does not know the
    keyword is called as it always was). ValueError (one line) when an order seed is set for a task whose ``setup``
    cannot take it (:func:`takes_order_seed`)."""
    if order_seed is None:
        task.setup(regime, seed, device)
        return
    if not takes_order_seed(task):
        raise ValueError(
            f"task {task.name!r} cannot vary its training order: its setup() takes no keyword order_seed, so an A/A "
            f"arm would repeat the baseline exactly (see tasks/base.py, Task)"
        )
    task.setup(regime, seed, device, order_seed=order_seed)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with ``n`` intra-op torch threads (a process-wide setting), then restore the previous
    count. Tasks run their small models single-threaded: faster on shared cores, and float reductions —
    hence resumed runs — stay bit-identical whatever the machine's default."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU copy of ``tensor``, safe to hand to safetensors."""
    return tensor.detach().to("cpu").contiguous().clone()


def optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """An optimizer's per-parameter state for a checkpoint: tensors as ``optim.<index>.<slot>`` (CPU copies,
    for safetensors) and the non-tensor slots as JSON-able ``{index: {slot: value}}``."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, slots in optimizer.state_dict()["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{slot}"] = cpu_copy(value)
            else:
                scalars.setdefault(str(index), {})[slot] = value
    return tensors, scalars


def optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict, params: list[torch.nn.Parameter]) -> dict:
    """The inverse of :func:`optimizer_tensors`: the ``state`` of an optimizer ``state_dict``. A slot shaped like
    its parameter (Adam's moments) takes the parameter's device and memory format (channels_last); the rest
    (Adam's ``step``) stays as saved, and ``load_state_dict`` places it as the optimizer needs."""
    state: dict[int, dict] = {int(i): dict(slots) for i, slots in scalars.items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, slot = key.split(".", 2)
            param = params[int(index)]
            if value.shape == param.shape:
                value = torch.empty_like(param).copy_(value)
            state.setdefault(int(index), {})[slot] = value
    return state
