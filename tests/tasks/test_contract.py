"""One contract suite, run against every built-in task and the example plugin tasks (as optuna runs one suite against
every storage backend): what the trainer relies on from any ``tasks.base.Task``.

Each task is built through the registry, by the name a run uses (``mnist``, ``examples.linefit:LineFit``), on its
smallest regime and epoch size, and held to its declaration through the trainer's own checks
(``trainer.contract``) and checkpoint files (``trainer.checkpoint``). A new task joins by adding a :class:`Case`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from bus.task_spec import Hyperparameter
from tasks.base import Task, setup_task, takes_order_seed
from tasks.registry import make_task
from trainer.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from trainer.contract import check_epoch_result, set_hyperparameters

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Case:
    """A task as a run names it, with the options and regime that make it small enough for a unit test."""

    name: str
    regime: str
    options: dict[str, Any] = field(default_factory=dict)
    shrink: Callable[[Task], None] | None = None  # after setup: what keeps a big evaluation fast, contract untouched
    # The A/A arm: whether setup takes an order seed, the data it must leave alone, and a regime where the order
    # matters (diabetes' 50 patients are one batch without dropout: its order changes nothing there).
    order_seed: bool = True
    data: Callable[[Task], torch.Tensor] | None = None
    order_regime: str | None = None


def first_test_images(task: Task) -> None:
    """MNIST validates on the first 1,000 of the 10,000 test images here (a tenth of the time; the same code)."""
    task.val_x, task.val_y = task.val_x[:1000], task.val_y[:1000]


CASES = [
    # 10 training images, one per class
    Case("mnist", "10", {"compile_eval": False}, first_test_images, data=lambda t: t.train_x),
    Case("diabetes", "50", data=lambda t: t.x_train, order_regime="full"),
    Case("cartpole", "2k", {"epoch_steps": 256, "eval_episodes": 2}),  # one rollout per epoch: 20 optimizer steps
    Case("examples.linefit:LineFit", "small", order_seed=False),
    Case("examples.momentum_task:MomentumDigits", "100", data=lambda t: t.x_train),
]


@pytest.fixture(params=CASES, ids=[c.name.rpartition(":")[2] or c.name for c in CASES])
def case(request) -> Case:
    return request.param


def build(case: Case, seed: int = 0, order_seed: int | None = None, regime: str | None = None) -> Task:
    task = make_task(case.name, case.options)
    setup_task(task, regime or case.regime, seed, CPU, order_seed=order_seed)
    if case.shrink is not None:
        case.shrink(task)
    return task


def train(task: Task, epochs: range) -> list[dict[str, float]]:
    """The metrics of ``epochs``, each epoch's result held to the declaration as the trainer holds it."""
    return [check_epoch_result(task.spec(), task.train_epoch(e), e).metrics for e in epochs]


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal metrics, bit for bit, where NaN (an RL epoch without a finished episode) equals NaN."""
    return a.keys() == b.keys() and all(x == b[k] or (math.isnan(x) and math.isnan(b[k])) for k, x in a.items())


def moved(knob: Hyperparameter) -> float:
    """A value one grid step away from the default, inside the bounds."""
    return next(v for v in knob.grid(knob.default) if v != knob.default)


def out_of_bounds(knob: Hyperparameter) -> list[float]:
    below = knob.low / 2 if knob.scale == "log" else knob.low - knob.step
    return [below, knob.high + knob.step if knob.scale == "linear" else knob.high * 2, math.nan, math.inf]


def test_the_declarations_hold_together(case):
    cls = type(make_task(case.name, case.options))
    spec = cls.spec()  # pydantic checks each knob's bounds, grid and trust region
    assert spec.name == cls.name and spec.objective and spec.mode in ("min", "max") and spec.noise_band >= 0
    assert cls.default_regime in cls.regimes and case.regime in cls.regimes and cls.default_epochs >= 1
    assert spec.hyperparameters and all(k.description and k.family for k in spec.hyperparameters)
    with pytest.raises(ValueError, match="unknown regime"):
        make_task(case.name, case.options).setup("no such regime", 0, CPU)


def test_a_fresh_task_uses_its_declared_defaults(case):
    task = build(case)
    assert task.hyperparameter_values() == {k.name: k.default for k in task.hyperparameters}


def test_every_declared_knob_is_settable_and_read_back_within_bounds(case):
    task = build(case)
    for knob in task.hyperparameters:
        for value in sorted({knob.low, knob.high, knob.default, *knob.grid(knob.default)}):
            before = task.hyperparameter_values()
            set_hyperparameters(task, {knob.name: value})
            assert task.hyperparameter_values() == {**before, knob.name: value}, (knob.name, value)
    everything = {knob.name: moved(knob) for knob in task.hyperparameters}
    set_hyperparameters(task, everything)
    assert task.hyperparameter_values() == everything


def test_out_of_bounds_values_and_unknown_knobs_are_refused_the_same_way(case):
    task = build(case)
    first = task.hyperparameters[0]
    for knob in task.hyperparameters:
        for bad in out_of_bounds(knob):
            # The good value beside it is not applied either: a command is taken whole or not at all.
            command = {first.name: moved(first), knob.name: bad}
            with pytest.raises(ValueError, match="^" + re.escape(f"{knob.name}={bad} is outside its bounds [")):
                set_hyperparameters(task, command)
            assert task.hyperparameter_values() == {k.name: k.default for k in task.hyperparameters}
    with pytest.raises(ValueError, match=rf"task '{task.name}' has no hyperparameter 'warp_factor'"):
        set_hyperparameters(task, {"warp_factor": 1.0})


def test_the_objective_is_a_finite_number_in_every_epoch(case):
    task = build(case)
    steps = task.steps_per_epoch()
    for epoch in (1, 2):
        result = task.train_epoch(epoch)
        metrics = check_epoch_result(task.spec(), result, epoch).metrics  # TaskContractError otherwise
        assert math.isfinite(metrics[task.objective])
        assert steps is None or result.steps == steps
        assert set(result.grad_norms) <= {name for name, _ in task.model.named_parameters()}


@pytest.mark.parametrize("order_seed", [None, 10_000], ids=["seed", "aa"])
def test_a_checkpoint_round_trip_continues_bit_exactly(case, order_seed, tmp_path):
    if order_seed is not None and not case.order_seed:
        pytest.skip("the task takes no order seed")
    reference = build(case, order_seed=order_seed)
    train(reference, range(1, 2))
    knobs = {knob.name: moved(knob) for knob in reference.hyperparameters}
    set_hyperparameters(reference, knobs)
    path = tmp_path / "r.safetensors"
    save_checkpoint(path, TrainingState(run_id="r", epoch=1, hyperparameters=knobs, alpha=0.4), reference, {})
    expected = train(reference, range(2, 4))

    torch.manual_seed(1234)  # as in a new process: whatever the task draws must come from the file
    restored = build(case, order_seed=order_seed)  # a resumed A/A run is set up with its recorded order seed
    state, deltas = load_checkpoint(path, "r", restored, CPU)
    assert state.epoch == 1 and deltas == {} and restored.hyperparameter_values() == knobs
    got = train(restored, range(2, 4))
    assert all(same(g, e) for g, e in zip(got, expected, strict=True)), (got, expected)
    for (name, a), b in zip(reference.model.state_dict().items(), restored.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_the_same_seed_gives_the_same_epochs_and_another_seed_others(case):
    first, again = train(build(case, seed=0), range(1, 3)), train(build(case, seed=0), range(1, 3))
    assert all(same(a, b) for a, b in zip(first, again, strict=True)), (first, again)
    assert not same(train(build(case, seed=1), range(1, 2))[0], first[0])


def test_an_order_seed_varies_the_training_order_and_leaves_data_and_initial_weights_alone(case):
    if not case.order_seed:  # a task that does not know the keyword: set up as ever, and an A/A arm is refused
        assert not takes_order_seed(make_task(case.name, case.options))
        with pytest.raises(ValueError, match=r"^task '\w+' cannot vary its training order: its setup\(\) takes no"):
            build(case, order_seed=10_000)
        return
    regime = case.order_regime or case.regime

    def run(order_seed: int | None):  # one at a time: MNIST draws its dropout masks from torch's global RNG
        task = build(case, 0, order_seed, regime)
        weights = {name: value.clone() for name, value in task.model.state_dict().items()}
        data = case.data(task).clone() if case.data is not None else None
        return weights, data, train(task, range(1, 3))

    (weights, data, first), (_, _, same_order) = run(None), run(0)
    other_weights, other_data, varied = run(10_000)
    assert all(same(a, b) for a, b in zip(first, same_order, strict=True))  # order_seed None is the seed
    assert weights.keys() == other_weights.keys()  # the initial weights and the data stay on the seed
    assert all(torch.equal(weights[name], other_weights[name]) for name in weights)
    assert data is None or torch.equal(data, other_data)
    assert all(same(a, b) for a, b in zip(varied, run(10_000)[2], strict=True))
    assert not same(varied[0], first[0]) and not same(varied[1], first[1])
