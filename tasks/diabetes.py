"""Regression on real tabular data: disease progression of the diabetes set, by a small MLP.

Data: scikit-learn's bundled diabetes set (Efron, Hastie, Johnstone & Tibshirani, "Least Angle
Regression", Annals of Statistics 32(2), 2004), shipped inside the scikit-learn wheel — no download.
442 patients × 10 baseline features (age, sex, body-mass index, average blood pressure, six blood-serum
measurements s1–s6), loaded unscaled (``scaled=False``: years, mg/dL, ...); the target is a
quantitative measure of disease progression one year after baseline (range 25–346).

Split: a seeded 80/20 split (``train_test_split(test_size=0.2, random_state=seed)``: 353 training,
89 validation patients). A regime is a training budget — the first ``n`` of a seeded permutation of the
353, so smaller budgets are nested in larger ones — while validation is always the full 20 %. Features
and target are standardised with the mean and (population) standard deviation of the training budget
only. RMSE and MAE are reported in the target's original units.

Reference: ordinary least squares (``sklearn.linear_model.LinearRegression``) fitted once per run on
exactly the same training budget and feature standardisation, reported every epoch as
``ols_val_rmse``/``ols_val_r2`` so tables and figures can show it next to the MLP. On these splits least
squares reaches validation R² 0.33–0.44; the MLP under its default knobs peaks near it within a few dozen
epochs and then overfits — room for a controller.

Randomness: the split and budget come from ``seed`` through scikit-learn and numpy; the initial weights from
``seed`` under a forked global torch RNG; batch order and dropout masks from the task's own generators. So
the task neither reads nor advances any global RNG stream, and a checkpoint holds all it needs.

Threads: the task runs torch with ``torch_threads`` (default 1) intra-op threads inside its methods and
restores the process's count on the way out. Its tensors are tiny (128 × 64); thread hand-offs cost more
than they save (measured on 2 busy cores: 100 epochs in 0.5 s on one thread, 27 s on two), and a fixed
count keeps float reductions — and so resumed runs — bit-identical.

Run ``python -m tasks.diabetes`` for the baseline table (per seed: OLS R², the MLP's best-epoch and
final-epoch R², wall time).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from tasks.base import EpochResult, Hyperparameter, Task, cpu_copy, optimizer_state, optimizer_tensors, torch_threads
from trainer.blend import BlendedOptimizer

NUM_FEATURES = 10
VAL_FRACTION = 0.2
CHECKPOINT_FORMAT = "reflectnet.tasks.diabetes/1"


@dataclass(frozen=True)
class DiabetesSplit:
    """One seed's split of the diabetes set, in original units (float64).

    ``train_index``/``val_index``: row numbers in ``load_diabetes()``; ``x_*`` [N, 10], ``y_*`` [N].
    """

    train_index: np.ndarray
    val_index: np.ndarray
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def load_split(seed: int, budget: int) -> DiabetesSplit:
    """The seeded 80/20 split, the training part cut to its first ``budget`` rows in a seeded order.

    The validation part depends on ``seed`` only, never on ``budget``. Raises ValueError for a budget
    outside [1, training part].
    """
    # scikit-learn costs about a second to import; only a run of this task needs it.
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True, scaled=False)
    x, y = x.astype(np.float64), y.astype(np.float64)
    train_part, val_index = train_test_split(np.arange(len(y)), test_size=VAL_FRACTION, random_state=seed)
    if not 1 <= budget <= len(train_part):
        raise ValueError(f"a training budget must be in [1, {len(train_part)}], got {budget}")
    order = np.random.default_rng(seed).permutation(len(train_part))
    train_index = train_part[order[:budget]]
    return DiabetesSplit(
        train_index=train_index,
        val_index=val_index,
        x_train=x[train_index],
        y_train=y[train_index],
        x_val=x[val_index],
        y_val=y[val_index],
    )


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """RMSE and MAE (target units) and R² (1 − SS_res / SS_tot about the target's own mean, as sklearn's
    ``r2_score``) of predictions ``pred`` [N] against ``target`` [N]."""
    err = pred - target
    ss_tot = float(np.sum((target - target.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": 1.0 - float(np.sum(err**2)) / ss_tot,
    }


class SeededDropout(torch.nn.Dropout):
    """Inverted dropout whose masks come from its own ``torch.Generator``, not the global RNG, so a run is
    reproducible and resumable from the task's own state whatever else draws random numbers in the process.

    ``p`` is read at every forward, so setting it takes effect at the next batch.
    """

    def __init__(self, p: float, generator: torch.Generator):
        super().__init__(p)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p >= 1.0:
            return torch.zeros_like(x)
        keep = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


def make_mlp(width: int, depth: int, dropout: float, generator: torch.Generator) -> torch.nn.Sequential:
    """10 → width (→ width)^(depth−1) → 1, ReLU then dropout after each hidden layer.

    Parameter names are stable: with depth 2, ``net.0`` (10→w), ``net.3`` (w→w), ``net.6`` (w→1),
    ``.weight``/``.bias``; PyTorch's default Linear initialisation (Kaiming-uniform).
    """
    layers: list[torch.nn.Module] = []
    fan_in = NUM_FEATURES
    for _ in range(depth):
        layers += [torch.nn.Linear(fan_in, width), torch.nn.ReLU(), SeededDropout(dropout, generator)]
        fan_in = width
    layers.append(torch.nn.Linear(fan_in, 1))
    return torch.nn.Sequential(*layers)


class _Regressor(torch.nn.Module):
    """Holds the MLP as ``net`` so parameter names read ``net.0.weight`` ...; [B, 10] → [B]."""

    def __init__(self, net: torch.nn.Sequential):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


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
            family="learning_rate",
            aliases=("lr", "learning-rate", "step size", "stepsize", "steps", "step", "update size"),
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
            family="regularization",
            aliases=("drop-out", "drop out"),
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
            family="regularization",
            aliases=("weight-decay", "l2 penalty", "l2"),
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
        self._model: _Regressor | None = None
        self._optimizer: BlendedOptimizer | None = None

    # -- setup -------------------------------------------------------------------------------------------

    def setup(self, regime: str, seed: int, device: torch.device) -> None:
        """Split and standardise the data, fit the OLS reference, build the seeded MLP and Adam."""
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
        # and dropout masks each from their own generator.
        self.order_rng = torch.Generator().manual_seed(seed)
        self.dropout_rng = torch.Generator(device=self.device).manual_seed(seed + 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = make_mlp(self.width, self.depth, values["dropout"], self.dropout_rng)
        self._model = _Regressor(net).to(self.device)
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
        """Learning rate and weight decay into every Adam param group, dropout into every dropout module."""
        for name in values:
            self.hyperparameter(name)  # KeyError for a knob this task does not have
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


# -- the baseline table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineRun:
    """One baseline run (default knobs, no agent): validation R² of OLS and of the MLP per epoch."""

    seed: int
    ols_r2: float
    val_r2: list[float]  # per epoch, epoch 1 first
    seconds: float  # wall time of setup plus training

    @property
    def best_epoch(self) -> int:
        """The epoch (from 1) of the lowest validation RMSE — equivalently the highest R² on a fixed split."""
        return int(np.argmax(self.val_r2)) + 1

    @property
    def best_r2(self) -> float:
        return self.val_r2[self.best_epoch - 1]


def run_baseline(seed: int, regime: str = "full", epochs: int | None = None) -> BaselineRun:
    """Train the baseline arm on the CPU: default knobs, alpha 0, no deltas."""
    started = time.perf_counter()
    task = DiabetesRegression()
    task.setup(regime, seed, torch.device("cpu"))
    val_r2 = [task.train_epoch(epoch).metrics["val_r2"] for epoch in range(1, (epochs or task.default_epochs) + 1)]
    return BaselineRun(seed=seed, ols_r2=task.ols_val_r2, val_r2=val_r2, seconds=time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Baseline arm of the diabetes task against least squares.")
    parser.add_argument("--regime", default=DiabetesRegression.default_regime, choices=list(DiabetesRegression.regimes))
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--epochs", type=int, default=DiabetesRegression.default_epochs)
    args = parser.parse_args(argv)
    DiabetesRegression().setup("50", 0, torch.device("cpu"))  # import scikit-learn (seconds) before any clock starts
    runs = [run_baseline(seed, args.regime, args.epochs) for seed in range(args.seeds)]
    print("| Seed | OLS val R² | MLP best val R² | Best epoch | MLP final val R² | Wall s |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r.seed} | {r.ols_r2:.4f} | {r.best_r2:.4f} | {r.best_epoch} | {r.val_r2[-1]:.4f} | {r.seconds:.2f} |"
        )
    ols, best, final = (float(np.mean(v)) for v in zip(*[(r.ols_r2, r.best_r2, r.val_r2[-1]) for r in runs]))
    print(f"| mean | {ols:.4f} | {best:.4f} | | {final:.4f} | {sum(r.seconds for r in runs):.2f} |")
    print(f"MLP best minus OLS: {best - ols:+.4f} (target: within 0.05)")


if __name__ == "__main__":
    main()
