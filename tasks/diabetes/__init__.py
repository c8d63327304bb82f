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

from tasks.diabetes.baseline import BaselineRun, run_baseline
from tasks.diabetes.data import NUM_FEATURES, VAL_FRACTION, DiabetesSplit, load_split, regression_metrics
from tasks.diabetes.model import SeededDropout, make_mlp
from tasks.diabetes.task import CHECKPOINT_FORMAT, DiabetesRegression

__all__ = [
    "BaselineRun",
    "CHECKPOINT_FORMAT",
    "DiabetesRegression",
    "DiabetesSplit",
    "NUM_FEATURES",
    "SeededDropout",
    "VAL_FRACTION",
    "load_split",
    "make_mlp",
    "regression_metrics",
    "run_baseline",
]
