"""The diabetes baseline table: the MLP under its default knobs against least squares, per seed
(``python -m tasks.diabetes``)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from tasks.diabetes.task import DiabetesRegression


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
