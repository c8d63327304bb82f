"""The paper's task behind the task seam: the CNN of section 2.2 on MNIST, exactly as ReflectNet trained
it before there was a seam (same seeds, same order of random draws, so the same numbers per epoch).

Setup, in this order (it fixes the random streams): load MNIST (``tasks.mnist.data``, offline sources,
damaged cache files moved aside and reported through :meth:`Task.emit`), draw the seeded
class-stratified subset of the regime, seed torch's global RNG with ``seed`` (initial weights, then the
dropout masks), build the CNN channels_last and fused Adam wrapped in :class:`BlendedOptimizer`,
compile the validation forward (optional), and a separate generator for the batch order. An order seed
(``setup(..., order_seed=)``, the A/A arm) reseeds the global RNG after the weights are built (dropout masks)
and seeds the batch order; the subset and the initial weights stay on ``seed``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import ClassVar

import torch

from tasks.base import EpochResult, Task, cpu_copy, optimizer_state, optimizer_tensors
from tasks.mnist import (
    DEFAULT_EPOCHS,
    DEFAULT_REGIME,
    DESCRIPTION,
    HYPERPARAMETERS,
    MODE,
    NOISE_BAND,
    OBJECTIVE,
    REGIMES,
)
from tasks.mnist.data import load_mnist, stratified_subset
from tasks.mnist.loop import EVAL_BATCH, compile_for_eval, evaluate, make_optimizer, to_model_input, train_epoch
from tasks.mnist.model import ReflectCNN
from trainer.blend import BlendedOptimizer

CHECKPOINT_FORMAT = "reflectnet-task-mnist-1"


class MnistTask(Task):
    """The paper's CNN classifying MNIST; regimes are training-set sizes, validation is the 10,000 test images.

    Metrics per epoch: ``train_loss``/``train_acc`` (running over the epoch's batches, dropout active),
    ``val_loss``/``val_acc`` (dropout off); vector ``per_class_val_acc`` [10]. Objective ``val_acc`` (max).
    ``data_dir``: the MNIST cache (default ``~/.cache/reflectnet/mnist``); ``batch_size``: 64 as in the
    paper; ``compile_eval``: ``torch.compile`` the validation forward (see ``tasks.mnist.loop``).
    """

    name: ClassVar[str] = "mnist"
    description: ClassVar[str] = DESCRIPTION
    objective: ClassVar[str] = OBJECTIVE
    mode = MODE
    noise_band: ClassVar[float] = NOISE_BAND
    regimes: ClassVar[dict[str, int]] = REGIMES
    default_regime: ClassVar[str] = DEFAULT_REGIME
    default_epochs: ClassVar[int] = DEFAULT_EPOCHS
    hyperparameters = HYPERPARAMETERS

    def __init__(self, data_dir: str | Path | None = None, batch_size: int = 64, compile_eval: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size=}")
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.batch_size = batch_size
        self.compile_eval = compile_eval
        self._model: ReflectCNN | None = None
        self._optimizer: BlendedOptimizer | None = None

    def setup(self, regime: str, seed: int, device: torch.device, order_seed: int | None = None) -> None:
        """``order_seed``: the batch order's and dropout masks' seed (None: ``seed``, as before order seeds).
        Raises ValueError for an unknown regime, ``tasks.mnist.data.DataUnavailableError`` when no MNIST source
        works (the message names the files and what to do)."""
        if regime not in self.regimes:
            raise ValueError(f"unknown regime {regime!r} for task {self.name!r}; known: {list(self.regimes)}")
        self.regime, self.seed, self.device = regime, seed, torch.device(device)
        data = load_mnist(self.data_dir)
        for repair in data.repairs:  # recorded, and told on the terminal: the user's cache was touched
            moved = str(repair.moved_to) if repair.moved_to else None
            self.emit("warning", "data_cache_repaired", file=str(repair.path), problem=repair.problem,
                      moved_to=moved, source=data.source)  # fmt: skip
            where = f", moved to {repair.moved_to.name}" if repair.moved_to else ""
            print(f"trainer: MNIST cache file {repair.path} {repair.problem}{where}; using {data.source}",
                  file=sys.stderr, flush=True)  # fmt: skip
        self.emit("info", "data_loaded", source=data.source, device=str(self.device))
        subset = stratified_subset(data.train_labels, self.regimes[regime], seed)
        self.train_x = to_model_input(data.train_images[subset], self.device)
        self.train_y = data.train_labels[subset].to(self.device)
        self.val_x = to_model_input(data.test_images, self.device)
        self.val_y = data.test_labels.to(self.device)
        del data
        values = {knob.name: knob.default for knob in self.hyperparameters}
        # Same seed -> same initial weights, batch order and dropout masks in both arms of a pair.
        torch.manual_seed(seed)
        self._model = ReflectCNN(values["dropout"]).to(device=self.device, memory_format=torch.channels_last)
        adam = make_optimizer(self._model, values["learning_rate"])
        self._optimizer = BlendedOptimizer(adam, dict(self._model.named_parameters()))
        self.values = values
        self.forward = self._model
        if self.compile_eval:
            self._compile()
        # Only a different order seed reseeds: order_seed == seed gives the very numbers of order_seed None.
        if order_seed is not None and order_seed != seed:
            torch.manual_seed(order_seed)
        self.order_rng = torch.Generator().manual_seed(seed if order_seed is None else order_seed)

    def _compile(self) -> None:
        started = time.perf_counter()
        self.forward, failure = compile_for_eval(
            self._model,
            self.val_x[:EVAL_BATCH],
            on_fallback=lambda reason: self.emit("warning", "eval_fell_back_to_eager", error=reason),
        )
        seconds = round(time.perf_counter() - started, 2)
        self.emit("info", "eval_compiled" if failure is None else "eval_compile_failed", error=failure, seconds=seconds)

    @property
    def model(self) -> ReflectCNN:
        if self._model is None:
            raise RuntimeError("call setup() first")
        return self._model

    @property
    def optimizer(self) -> BlendedOptimizer:
        if self._optimizer is None:
            raise RuntimeError("call setup() first")
        return self._optimizer

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch: ceil(training images / batch size)."""
        return math.ceil(len(self.train_x) / self.batch_size)

    def train_epoch(self, epoch: int) -> EpochResult:
        tr = train_epoch(self.model, self.optimizer, self.train_x, self.train_y, self.batch_size, self.order_rng)
        ev = evaluate(self.model, self.val_x, self.val_y, forward=self.forward)
        metrics = {"train_loss": tr.loss, "train_acc": tr.acc, "val_loss": ev.loss, "val_acc": ev.acc}
        return EpochResult(metrics, tr.grad_norms, {"per_class_val_acc": ev.per_class_acc}, tr.steps)

    def hyperparameter_values(self) -> dict[str, float]:
        return dict(self.values)

    def set_hyperparameters(self, values: dict[str, float]) -> None:
        """``learning_rate`` into Adam's param groups, ``dropout`` into the CNN. The values are the trainer's,
        checked against the declarations already (``trainer.contract``)."""
        self.values = {**self.values, **{k: float(v) for k, v in values.items()}}
        for group in self.optimizer.param_groups:
            group["lr"] = self.values["learning_rate"]
        self.model.dropout = self.values["dropout"]

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors: ``model.<name>``, Adam's slots ``optim.<index>.<slot>``, ``rng.order``. Meta: regime, seed,
        knob values, Adam's param groups and non-tensor slots. (Torch's global RNG, which draws the dropout
        masks, is saved by the trainer for every task.)"""
        tensors = {f"model.{name}": cpu_copy(value) for name, value in self.model.state_dict().items()}
        optim, scalars = optimizer_tensors(self.optimizer)
        tensors |= optim
        tensors["rng.order"] = self.order_rng.get_state()
        meta = {
            "format": CHECKPOINT_FORMAT,
            "regime": self.regime,
            "seed": self.seed,
            "hyperparameters": dict(self.values),
            "param_groups": self.optimizer.state_dict()["param_groups"],
            "optim_scalars": scalars,
        }
        return tensors, json.loads(json.dumps(meta))

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Load a :meth:`checkpoint_state`; ValueError for another task's, regime's or seed's checkpoint."""
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {self.name} checkpoint: format {meta.get('format')!r}")
        if (meta["regime"], meta["seed"]) != (self.regime, self.seed):
            raise ValueError(
                f"checkpoint is for regime {meta['regime']!r} seed {meta['seed']}, "
                f"this task is set up for {self.regime!r} seed {self.seed}"
            )
        self.model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
        state = optimizer_state(tensors, meta["optim_scalars"], list(self.model.parameters()))
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.order_rng.set_state(tensors["rng.order"])
        self.set_hyperparameters(meta["hyperparameters"])
