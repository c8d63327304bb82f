"""The diabetes task behind the task seam: :class:`DiabetesRegression` (see ``tasks.diabetes`` for the data,
the split, the reference and the randomness)."""

from __future__ import annotations

import json
import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from tasks.base import EpochResult, Hyperparameter, Task, cpu_copy, optimizer_state, optimizer_tensors, torch_threads
from tasks.diabetes.data import load_split, regression_metrics
from tasks.diabetes.model import Regressor, SeededDropout, make_mlp
from trainer.blend import BlendedOptimizer

CHECKPOINT_FORMAT = "reflectnet.tasks.diabetes/1"


class DiabetesRegression(Task):
    """A small MLP regresses diabetes progression; regimes are training budgets of the 80 % part.

    Objective: validation RMSE (``val_rmse``, target units, lower is better). Per-epoch metrics:
    ``train_loss`` — mean squared error on the *standardised* target over the epoch's mini-batches, dropout
    active; ``train_rmse``/``train_r2`` — the training budget re-evaluated after the epoch, dropout off,
    target units; ``val_rmse``/``val_r2``/``val_mae``; ``ols_val_rmse``/``ols_val_r2`` — the least-squares
    reference, constant within a run.

    Defaults: width 64, depth 2, mini-batches of 128 in a seeded order (3 Adam steps per epoch on the full
    budget, 1 on budgets of 100 and 50), learning rate 1e-3, no dropout, no weight decay, 40 epochs (a guided
    run with the embedded model stays within minutes). On seeds 0–4 (full budget) the MLP's best validation R²
    comes at epochs 12–26, averages 0.432 against least squares' 0.418, is 0.405 on average at epoch 40 and
    falls to 0.32 by epoch 100.
    """

    name: ClassVar[str] = "diabetes"
    description: ClassVar[str] = (
        "A small MLP (10 -> 64 -> 64 -> 1, ReLU, dropout) trained with Adam to predict diabetes disease "
        "progression one year ahead from 10 tabular baseline measurements of a few hundred patients, "
        "scored by validation RMSE (lower is better) next to a least-squares reference."
    )
    objective: ClassVar[str] = "val_rmse"
    mode = "min"
    summary_metrics: ClassVar[tuple[str, ...]] = ("val_r2",)  # the baseline target is stated in R²
    noise_band = 0.5  # RMSE in target units (~55 at best): 1 % of it
    regimes: ClassVar[dict[str, int]] = {"full": 353, "200": 200, "100": 100, "50": 50}
    default_regime: ClassVar[str] = "full"
    default_epochs: ClassVar[int] = 40
    hyperparameters: ClassVar[tuple[Hyperparameter, ...]] = (
        Hyperparameter(
            name="learning_rate",
            default=1e-3,
            low=1e-5,
            high=1e-1,
            scale="log",
            step=2.0,
            max_change=3.0,
            description="Adam's step size",
        ),
        Hyperparameter(
            name="dropout",
            default=0.0,
            low=0.0,
            high=0.9,
            scale="linear",
            step=0.1,
            max_change=0.2,
            description="probability of zeroing each hidden unit during training",
        ),
        Hyperparameter(
            name="weight_decay",
            default=0.0,
            low=0.0,
            high=0.1,
            scale="linear",
            step=0.01,
            max_change=0.03,
            description="L2 penalty coefficient added to the gradients (Adam's weight_decay)",
        ),
    )

    def __init__(self, batch_size: int = 128, width: int = 64, depth: int = 2, torch_threads: int = 1):
        if min(batch_size, width, depth, torch_threads) < 1:
            raise ValueError(
                f"batch_size, width, depth and torch_threads must be positive, got "
                f"{batch_size=} {width=} {depth=} {torch_threads=}"
            )
        self.batch_size = batch_size
        self.torch_threads = torch_threads
        self.width = width
        self.depth = depth
        self._model: Regressor | None = None
        self._optimizer: BlendedOptimizer | None = None

    # -- setup -------------------------------------------------------------------------------------------

    def setup(self, regime: str, seed: int, device: torch.device, order_seed: int | None = None) -> None:
        """Split and standardise the data, fit the OLS reference, build the seeded MLP and Adam. ``order_seed``
        seeds the batch order and the dropout masks (None: ``seed``); the split and the weights stay on ``seed``."""
        if regime not in self.regimes:
            raise ValueError(f"unknown regime {regime!r} for task {self.name!r}; known: {list(self.regimes)}")
        from sklearn.linear_model import LinearRegression

        self.regime, self.seed, self.device = regime, seed, torch.device(device)
        self.split = load_split(seed, self.regimes[regime])
        s = self.split
        self.x_mean, self.x_std = s.x_train.mean(0), s.x_train.std(0)
        self.x_std[self.x_std == 0] = 1.0  # a constant feature (possible in a tiny budget) stays 0
        self.y_mean, self.y_std = float(s.y_train.mean()), float(s.y_train.std()) or 1.0
        xs_train = (s.x_train - self.x_mean) / self.x_std
        xs_val = (s.x_val - self.x_mean) / self.x_std

        ols = LinearRegression().fit(xs_train, s.y_train)
        reference = regression_metrics(ols.predict(xs_val), s.y_val)
        self.ols_val_rmse, self.ols_val_r2 = reference["rmse"], reference["r2"]

        def as_tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=torch.float32, device=self.device)

        self.x_train, self.x_val = as_tensor(xs_train), as_tensor(xs_val)
        self.y_train = as_tensor((s.y_train - self.y_mean) / self.y_std)  # standardised target [N]

        values = {knob.name: knob.default for knob in self.hyperparameters}
        # Seeds: model init from ``seed`` (global RNG forked, so nothing outside is disturbed); batch order
        # and dropout masks each from their own generator, seeded by the order seed.
        order = seed if order_seed is None else order_seed
        self.order_rng = torch.Generator().manual_seed(order)
        self.dropout_rng = torch.Generator(device=self.device).manual_seed(order + 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = make_mlp(self.width, self.depth, values["dropout"], self.dropout_rng)
        self._model = Regressor(net).to(self.device)
        adam = torch.optim.Adam(
            self._model.parameters(), lr=values["learning_rate"], weight_decay=values["weight_decay"]
        )
        self._optimizer = BlendedOptimizer(adam, dict(self._model.named_parameters()))
        self.values = values

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            raise RuntimeError("call setup() first")
        return self._model

    @property
    def optimizer(self) -> BlendedOptimizer:
        if self._optimizer is None:
            raise RuntimeError("call setup() first")
        return self._optimizer

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch: ceil(training budget / batch size) — what ``set_blend`` needs."""
        return math.ceil(len(self.x_train) / self.batch_size)

    # -- training ----------------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> EpochResult:
        """One pass over the training budget in a seeded random order, then evaluation of both parts."""
        with torch_threads(self.torch_threads):
            return self._train_epoch()

    def _train_epoch(self) -> EpochResult:
        model, optimizer = self.model, self.optimizer
        params = dict(model.named_parameters())
        model.train()
        n = len(self.x_train)
        order = torch.randperm(n, generator=self.order_rng).to(self.device)
        loss_sum = torch.zeros((), device=self.device)
        grad_norm_sum = torch.zeros(len(params), device=self.device)
        steps = 0
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            loss = F.mse_loss(model(self.x_train[idx]), self.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm_sum += torch.stack([torch.linalg.vector_norm(p.grad) for p in params.values()])
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            steps += 1
        grad_norms = dict(zip(params, (grad_norm_sum / steps).tolist()))

        train = regression_metrics(self.predict(self.x_train), self.split.y_train)
        val = regression_metrics(self.predict(self.x_val), self.split.y_val)
        metrics = {
            "train_loss": loss_sum.item() / n,
            "train_rmse": train["rmse"],
            "train_r2": train["r2"],
            "val_rmse": val["rmse"],
            "val_r2": val["r2"],
            "val_mae": val["mae"],
            "ols_val_rmse": self.ols_val_rmse,
            "ols_val_r2": self.ols_val_r2,
        }
        return EpochResult(metrics=metrics, grad_norms=grad_norms, steps=steps)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> np.ndarray:
        """Predictions in target units (float64 [N]) for standardised features ``x`` [N, 10], dropout off."""
        self.model.eval()
        with torch_threads(self.torch_threads):
            pred = self.model(x).to("cpu", torch.float64).numpy()
        return pred * self.y_std + self.y_mean

    def hyperparameter_values(self) -> dict[str, float]:
        """The knob values the next epoch uses."""
        return dict(self.values)

    def set_hyperparameters(self, values: dict[str, float]) -> None:
        """Learning rate and weight decay into every Adam param group, dropout into every dropout module. The
        values are the trainer's, checked against the declarations already (``trainer.contract``)."""
        self.values = {**self.values, **{k: float(v) for k, v in values.items()}}
        for group in self.optimizer.param_groups:
            group["lr"] = self.values["learning_rate"]
            group["weight_decay"] = self.values["weight_decay"]
        for module in self.model.modules():
            if isinstance(module, SeededDropout):
                module.p = self.values["dropout"]

    # -- checkpoints -------------------------------------------------------------------------------------

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors: ``model.<name>``, Adam's per-parameter slots ``optim.<index>.<slot>`` (``step``,
        ``exp_avg``, ``exp_avg_sq``), ``rng.order`` and ``rng.dropout`` — contiguous, on the CPU. Meta (JSON):
        regime, seed, the knob values, Adam's param groups and any non-tensor slots."""
        tensors = {f"model.{name}": cpu_copy(value) for name, value in self.model.state_dict().items()}
        optim, scalars = optimizer_tensors(self.optimizer)
        tensors |= optim
        tensors["rng.order"] = self.order_rng.get_state()
        tensors["rng.dropout"] = self.dropout_rng.get_state()
        meta = {
            "format": CHECKPOINT_FORMAT,
            "regime": self.regime,
            "seed": self.seed,
            "hyperparameters": dict(self.values),
            "param_groups": self.optimizer.state_dict()["param_groups"],
            "optim_scalars": scalars,
        }
        return tensors, json.loads(json.dumps(meta))  # exactly what a JSON round trip gives back

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Load a :meth:`checkpoint_state` into this task, set up with the same regime and seed (ValueError
        otherwise: the data would differ)."""
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
        self.dropout_rng.set_state(tensors["rng.dropout"])
        self.set_hyperparameters(meta["hyperparameters"])
