"""The diabetes set, split and scored: scikit-learn's bundled copy (442 patients x 10 features, target 25-346),
a seeded 80/20 split with nested training budgets, and the regression metrics in target units."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_FEATURES = 10
VAL_FRACTION = 0.2


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
