"""A task written outside ReflectNet, in one file, with two knobs ReflectNet has never seen: SGD's ``momentum``
(alias "beta") and the loss's ``label_smoothing``, beside the learning rate.

An MLP (64 -> 64 -> 10, ReLU) classifies scikit-learn's bundled 8x8 handwritten digits (1,797 images, no
download): a seeded 80/20 split, pixels scaled to [0, 1], SGD with momentum on mini-batches of 64 in a seeded
order, cross-entropy with label smoothing. An epoch over the full budget takes a few milliseconds.

Nothing of ReflectNet is edited to steer it. With the repository root on ``PYTHONPATH``::

    python run.py --task examples.momentum_task:MomentumDigits --controller llm \\
        --instruction "raise the momentum"

The knobs' ``family`` and ``aliases`` are what the instruction reader and the rules go by: "raise the momentum"
or "more beta" names ``momentum``; "less overfitting" raises ``label_smoothing`` (a regularizer).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from tasks.base import EpochResult, Hyperparameter, Task, cpu_copy, optimizer_state, optimizer_tensors, torch_threads
from trainer.blend import BlendedOptimizer

CHECKPOINT_FORMAT = "examples.momentum_task/1"
NUM_CLASSES = 10


def load_digits_split(seed: int, budget: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train [budget, 64], y_train [budget], x_val [359, 64], y_val [359])``: pixels in [0, 1], labels 0-9.
    The validation fifth depends on ``seed`` only; the training budget is the first ``budget`` of the rest."""
    from sklearn.datasets import load_digits  # about a second to import: only a run of this task needs it

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = len(y) // 5
    val, train = order[:n_val], order[n_val:][:budget]
    as_x = lambda rows: torch.as_tensor(x[rows] / 16.0, dtype=torch.float32)  # noqa: E731  (pixels are 0..16)
    as_y = lambda rows: torch.as_tensor(y[rows], dtype=torch.long)  # noqa: E731
    return as_x(train), as_y(train), as_x(val), as_y(val)


class MomentumDigits(Task):
    """An MLP on sklearn's digits, steered by learning rate, momentum and label smoothing. Objective ``val_acc``
    (max); metrics ``train_loss`` (smoothed cross-entropy over the epoch's batches), ``val_loss`` (plain
    cross-entropy), ``val_acc``."""

    name = "momentum_digits"
    description = (
        "A small MLP (64 -> 64 -> 10) trained by SGD with momentum and label-smoothed cross-entropy to classify "
        "8x8 handwritten digits, scored by validation accuracy (higher is better)."
    )
    objective = "val_acc"
    mode = "max"
    noise_band = 0.005  # about two of the 359 validation images
    regimes = {"full": 1438, "500": 500, "100": 100}
    default_regime = "full"
    default_epochs = 10
    hyperparameters = (
        Hyperparameter(name="learning_rate", default=0.02, low=1e-4, high=0.5, scale="log", step=2.0, max_change=3.0,
                       description="SGD's step size", family="learning_rate", aliases=("lr", "step size")),
        Hyperparameter(name="momentum", default=0.5, low=0.0, high=0.99, scale="linear", step=0.1, max_change=0.2,
                       description="SGD momentum: the fraction of the previous update carried into the next",
                       family="other", aliases=("beta",)),
        Hyperparameter(name="label_smoothing", default=0.0, low=0.0, high=0.3, scale="linear", step=0.05,
                       max_change=0.1, description="probability mass the loss's targets spread over the other classes",
                       family="regularization", aliases=("label smoothing", "smoothing")),
    )  # fmt: skip

    def __init__(self, batch_size: int = 64, width: int = 64):
        if min(batch_size, width) < 1:
            raise ValueError(f"batch_size and width must be positive, got {batch_size=} {width=}")
        self.batch_size, self.width = batch_size, width
        self.net: torch.nn.Sequential | None = None

    def setup(self, regime: str, seed: int, device: torch.device, order_seed: int | None = None) -> None:
        """Split, weights and SGD from ``seed``; the batch order from ``order_seed`` (None: ``seed``), which is
        what lets this task run an A/A arm (``tasks.base.Task``)."""
        if regime not in self.regimes:
            raise ValueError(f"unknown regime {regime!r} for task {self.name!r}; known: {list(self.regimes)}")
        self.regime, self.seed, self.device = regime, seed, torch.device(device)
        data = load_digits_split(seed, self.regimes[regime])
        self.x_train, self.y_train, self.x_val, self.y_val = (t.to(self.device) for t in data)
        self.values = {knob.name: knob.default for knob in self.hyperparameters}
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, the caller's stream untouched
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(64, self.width), torch.nn.ReLU(), torch.nn.Linear(self.width, NUM_CLASSES)
            ).to(self.device)
        sgd = torch.optim.SGD(self.net.parameters(), lr=self.values["learning_rate"], momentum=self.values["momentum"])
        self.opt = BlendedOptimizer(sgd, dict(self.net.named_parameters()))
        self.order_rng = torch.Generator().manual_seed(seed if order_seed is None else order_seed)

    @property
    def model(self) -> torch.nn.Module:
        if self.net is None:
            raise RuntimeError("call setup() first")
        return self.net

    @property
    def optimizer(self) -> BlendedOptimizer:
        if self.net is None:
            raise RuntimeError("call setup() first")
        return self.opt

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.x_train) / self.batch_size)

    def train_epoch(self, epoch: int) -> EpochResult:
        with torch_threads(1):  # a tiny MLP: one thread is faster, and float sums stay bit-identical on resume
            return self._train_epoch()

    def _train_epoch(self) -> EpochResult:
        net, params = self.model, dict(self.model.named_parameters())
        net.train()
        n = len(self.x_train)
        order = torch.randperm(n, generator=self.order_rng).to(self.device)
        loss_sum, grad_norm_sum, steps = 0.0, torch.zeros(len(params)), 0
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            loss = F.cross_entropy(net(self.x_train[idx]), self.y_train[idx],
                                   label_smoothing=self.values["label_smoothing"])  # fmt: skip
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm_sum += torch.stack([torch.linalg.vector_norm(p.grad).cpu() for p in params.values()])
            self.opt.step()
            loss_sum += loss.item() * len(idx)
            steps += 1
        net.eval()
        with torch.no_grad():
            logits = net(self.x_val)
            val_loss = F.cross_entropy(logits, self.y_val).item()
            val_acc = (logits.argmax(1) == self.y_val).float().mean().item()
        metrics = {"train_loss": loss_sum / n, "val_loss": val_loss, "val_acc": val_acc}
        return EpochResult(metrics, dict(zip(params, (grad_norm_sum / steps).tolist())), steps=steps)

    def hyperparameter_values(self) -> dict[str, float]:
        return dict(self.values)

    def set_hyperparameters(self, values: dict[str, float]) -> None:
        """Learning rate and momentum into SGD's param group; label smoothing into the next epoch's loss."""
        self.values = {**self.values, **{k: float(v) for k, v in values.items()}}
        for group in self.opt.param_groups:
            group["lr"], group["momentum"] = self.values["learning_rate"], self.values["momentum"]

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors: ``model.<name>``, SGD's momentum buffers ``optim.<index>.momentum_buffer``, ``rng.order``.
        Meta: format, regime, seed, knob values, SGD's non-tensor state."""
        tensors = {f"model.{k}": cpu_copy(v) for k, v in self.model.state_dict().items()}
        optim, scalars = optimizer_tensors(self.opt)
        tensors |= optim
        tensors["rng.order"] = self.order_rng.get_state()
        meta = {"format": CHECKPOINT_FORMAT, "regime": self.regime, "seed": self.seed,
                "hyperparameters": dict(self.values), "optim_scalars": scalars}  # fmt: skip
        return tensors, meta

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """The inverse of :meth:`checkpoint_state`, after :meth:`setup` with the same regime and seed."""
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {self.name} checkpoint: format {meta.get('format')!r}")
        if (meta["regime"], meta["seed"]) != (self.regime, self.seed):
            raise ValueError(f"checkpoint is for regime {meta['regime']!r} seed {meta['seed']}, "
                             f"this task is set up for {self.regime!r} seed {self.seed}")  # fmt: skip
        self.model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
        state = optimizer_state(tensors, meta["optim_scalars"], list(self.model.parameters()))
        self.opt.load_state_dict({"state": state, "param_groups": self.opt.state_dict()["param_groups"]})
        self.order_rng.set_state(tensors["rng.order"])
        self.set_hyperparameters(meta["hyperparameters"])
