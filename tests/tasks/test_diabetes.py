"""The diabetes regression task: data split, least-squares reference, determinism, checkpoints, knobs, blend,
and the baseline arm against least squares on seeds 0–4."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_squared_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tasks.diabetes import DiabetesRegression, SeededDropout, run_baseline

CPU = torch.device("cpu")


def make_task(regime: str = "full", seed: int = 0, **kwargs) -> DiabetesRegression:
    task = DiabetesRegression(**kwargs)
    task.setup(regime, seed, CPU)
    return task


def weights(task: DiabetesRegression) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in task.model.named_parameters()}


def test_declarations():
    assert DiabetesRegression.objective == "val_rmse" and DiabetesRegression.mode == "min"
    assert DiabetesRegression.better(50.0, 60.0) and not DiabetesRegression.better(60.0, 50.0)
    assert DiabetesRegression.regimes == {"full": 353, "200": 200, "100": 100, "50": 50}
    assert {k.name for k in DiabetesRegression.hyperparameters} == {"learning_rate", "dropout", "weight_decay"}
    assert DiabetesRegression.hyperparameter("weight_decay").low == 0.0
    task = make_task()
    assert [n for n, _ in task.model.named_parameters()] == [
        "net.0.weight",
        "net.0.bias",
        "net.3.weight",
        "net.3.bias",
        "net.6.weight",
        "net.6.bias",
    ]
    assert task.steps_per_epoch() == math.ceil(353 / 128) == 3
    result = task.train_epoch(1)
    assert result.steps == 3
    assert set(result.grad_norms) == set(dict(task.model.named_parameters()))
    assert all(v > 0 and math.isfinite(v) for v in result.grad_norms.values())
    expected = {"train_loss", "train_rmse", "train_r2", "val_rmse", "val_r2", "val_mae", "ols_val_rmse", "ols_val_r2"}
    assert expected <= set(result.metrics)
    with pytest.raises(ValueError, match="unknown regime"):
        DiabetesRegression().setup("10pct", 0, CPU)


@pytest.mark.parametrize("seed", [0, 3])
def test_ols_reference_equals_sklearn_on_the_split(seed):
    x, y = load_diabetes(return_X_y=True, scaled=False)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=seed)
    ols = make_pipeline(StandardScaler(), LinearRegression()).fit(x_train, y_train)
    pred = ols.predict(x_val)

    task = make_task("full", seed)
    np.testing.assert_array_equal(task.split.x_val, x_val)
    np.testing.assert_array_equal(task.split.y_val, y_val)
    # The full budget is the whole 80 % part, in another order.
    assert sorted(map(tuple, task.split.x_train)) == sorted(map(tuple, x_train))
    metrics = task.train_epoch(1).metrics
    assert metrics["ols_val_r2"] == pytest.approx(r2_score(y_val, pred), abs=1e-10)
    assert metrics["ols_val_rmse"] == pytest.approx(math.sqrt(mean_squared_error(y_val, pred)), abs=1e-8)
    assert 0.3 < metrics["ols_val_r2"] < 0.5  # the published range on these splits
    assert 45 < metrics["ols_val_rmse"] < 65  # original units of the target (25–346)
    # The MLP's RMSE is in the same units: its prediction from the metrics matches a direct evaluation.
    mlp_pred = task.predict(task.x_val)
    assert metrics["val_rmse"] == pytest.approx(math.sqrt(mean_squared_error(y_val, mlp_pred)), rel=1e-12)
    assert metrics["val_r2"] == pytest.approx(r2_score(y_val, mlp_pred), rel=1e-12)


def test_budgets_are_nested_draws_with_one_validation_set_per_seed():
    tasks = {regime: make_task(regime, seed=2) for regime in DiabetesRegression.regimes}
    val_index = tasks["full"].split.val_index
    assert len(val_index) == 89
    for regime, n in DiabetesRegression.regimes.items():
        split = tasks[regime].split
        assert len(split.train_index) == len(set(split.train_index)) == n == len(tasks[regime].x_train)
        np.testing.assert_array_equal(split.val_index, val_index)
        assert not set(split.train_index) & set(val_index)
        # standardised with the budget's own statistics
        assert torch.allclose(tasks[regime].x_train.mean(0), torch.zeros(10), atol=1e-5)
        assert torch.allclose(tasks[regime].x_train.std(0, unbiased=False), torch.ones(10), atol=1e-5)
        assert torch.allclose(tasks[regime].y_train.std(unbiased=False), torch.tensor(1.0), atol=1e-5)
    for small, large in [("50", "100"), ("100", "200"), ("200", "full")]:
        assert set(tasks[small].split.train_index) < set(tasks[large].split.train_index)
    assert not np.array_equal(make_task("full", seed=3).split.val_index, val_index)


def test_same_seed_same_metrics_other_seed_other_metrics():
    def run(seed):
        task = make_task(seed=seed)
        task.set_hyperparameters({"dropout": 0.3})
        return [(r.metrics, r.grad_norms) for r in map(task.train_epoch, range(1, 4))]

    first = run(0)
    assert run(0) == first
    assert run(1)[0][0]["val_rmse"] != first[0][0]["val_rmse"]


def test_leaves_global_rng_and_thread_count_alone():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(123)
        rng = torch.get_rng_state()
        task = DiabetesRegression(torch_threads=1)
        task.setup("full", 0, CPU)
        task.set_hyperparameters({"dropout": 0.3})
        task.train_epoch(1)
        assert torch.equal(torch.get_rng_state(), rng)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_checkpoint_restore_continues_bit_exactly():
    reference = make_task(seed=1)
    reference.set_hyperparameters({"dropout": 0.2})
    expected = [reference.train_epoch(e).metrics for e in range(1, 4)]
    reference.set_hyperparameters({"learning_rate": 3e-3, "weight_decay": 0.02})
    expected += [reference.train_epoch(e).metrics for e in range(4, 7)]

    first = make_task(seed=1)
    first.set_hyperparameters({"dropout": 0.2})
    for e in range(1, 4):
        first.train_epoch(e)
    first.set_hyperparameters({"learning_rate": 3e-3, "weight_decay": 0.02})
    tensors, meta = first.checkpoint_state()
    # What the trainer stores: safetensors bytes and JSON, no pickle.
    tensors, meta = safetensors_load(safetensors_save(tensors)), json.loads(json.dumps(meta))

    resumed = make_task(seed=1)
    resumed.restore_state(tensors, meta)
    assert resumed.optimizer.param_groups[0]["lr"] == 3e-3
    got = [resumed.train_epoch(e).metrics for e in range(4, 7)]
    assert got == expected[3:]
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name

    with pytest.raises(ValueError, match="seed"):
        make_task(seed=2).restore_state(tensors, meta)


def test_learning_rate_sets_adams_step():
    # One full-batch step per epoch: Adam's first step is lr * g / (|g| + eps), so every weight with a
    # gradient moves by lr (to eps / |g|).
    for lr in (1e-4, 2e-2):
        task = make_task(batch_size=353)
        task.set_hyperparameters({"learning_rate": lr})
        assert all(group["lr"] == lr for group in task.optimizer.param_groups)
        before = weights(task)
        task.train_epoch(1)
        param = task.model.net[0].weight
        moved = (param.detach() - before["net.0.weight"]).abs()[param.grad.abs() > 1e-4]
        assert moved.numel() > 300
        assert torch.allclose(moved, torch.full_like(moved, lr), rtol=1e-3)


def test_weight_decay_reaches_adam():
    plain, decayed = make_task(), make_task()
    decayed.set_hyperparameters({"weight_decay": 0.1})
    assert all(group["weight_decay"] == 0.1 for group in decayed.optimizer.param_groups)
    assert plain.train_epoch(1).metrics != decayed.train_epoch(1).metrics


def test_dropout_zeroes_that_fraction_of_hidden_units_in_training_only():
    task = make_task()
    dropped: list[float] = []

    def hook(module, inputs, output):
        alive = inputs[0] != 0
        dropped.append(((output == 0) & alive).sum().item() / alive.sum().item())

    for module in task.model.modules():
        if isinstance(module, SeededDropout):
            module.register_forward_hook(hook)
    val_before = task.predict(task.x_val)
    task.set_hyperparameters({"dropout": 0.5})
    assert [m.p for m in task.model.modules() if isinstance(m, SeededDropout)] == [0.5, 0.5]
    np.testing.assert_array_equal(task.predict(task.x_val), val_before)  # evaluation: no dropout
    dropped.clear()
    task.model.train()
    task.model(task.x_train)
    assert len(dropped) == 2 and all(0.45 < d < 0.55 for d in dropped), dropped
    task.set_hyperparameters({"dropout": 0.0})
    dropped.clear()
    task.train_epoch(1)
    assert dropped and max(dropped) == 0.0


def test_alpha_one_delta_moves_exactly_that_parameter_by_delta():
    plain, blended = make_task(seed=4), make_task(seed=4)
    start = weights(blended)
    delta = torch.randn(start["net.3.weight"].shape, generator=torch.Generator().manual_seed(0)) * 0.01
    plain.optimizer.set_blend(1.0, {}, plain.steps_per_epoch())
    blended.optimizer.set_blend(1.0, {"net.3.weight": delta}, blended.steps_per_epoch())
    plain.train_epoch(1)
    blended.train_epoch(1)
    after_plain, after_blended = weights(plain), weights(blended)

    assert torch.allclose(after_blended["net.3.weight"] - start["net.3.weight"], delta, atol=1e-7, rtol=0)
    adam_move = after_plain["net.3.weight"] - start["net.3.weight"]
    assert adam_move.abs().max() > 1e-3  # without the delta Adam moved it, and not by delta
    assert not torch.allclose(adam_move, delta, atol=1e-4)
    for name in ("net.0.weight", "net.6.weight"):  # no delta: Adam's own step, in both runs
        assert not torch.equal(after_blended[name], start[name])


def test_baseline_best_epoch_comes_within_005_of_least_squares_over_five_seeds():
    runs = [run_baseline(seed, epochs=100) for seed in range(5)]
    ols = np.mean([r.ols_r2 for r in runs])
    best = np.mean([r.best_r2 for r in runs])
    final = np.mean([r.val_r2[-1] for r in runs])
    assert ols == pytest.approx(0.4176, abs=1e-3)
    assert abs(best - ols) <= 0.05, (best, ols)
    assert final < best - 0.05  # it overfits later: a controller has something to do
    assert all(r.best_epoch < DiabetesRegression.default_epochs for r in runs)  # the default budget holds the peak
    at_default = np.mean([r.val_r2[DiabetesRegression.default_epochs - 1] for r in runs])
    assert at_default < best  # and, by its end, some of the decline
