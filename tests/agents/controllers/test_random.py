"""The ``random`` controller: seeded by run and epoch, uniform over the bounded action space, and checked like every
other controller's proposal."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from agents.controllers import resolve_controller
from agents.controllers.random import WEIGHT_OP_PROBABILITY, RandomPolicy
from agents.proposals.check import OP_CHOICES, OP_RANGES, allowed_ranges, check_proposal, grid_choices
from agents.proposals.parse import OP_VALUE_KEYS
from tests.helpers import agent_config, make_metrics, make_regression_metrics


def at(metrics, run_id: str = "run-test", epoch: int | None = None):
    """``metrics`` as if of run ``run_id`` after epoch ``epoch``."""
    return metrics.model_copy(update={"run_id": run_id, "epoch": epoch or metrics.epoch})


def proposals(policy: RandomPolicy, metrics, n: int) -> list:
    """The proposals after ``n`` different epochs of one run (every draw comes from a new (run, epoch) seed)."""
    return [policy.propose({"metrics": at(metrics, epoch=e)}) for e in range(1, n + 1)]


def test_the_same_run_and_epoch_draw_the_same_command_and_others_draw_others():
    policy, m = RandomPolicy(), make_metrics([0.90, 0.91, 0.92])
    first = policy.propose({"metrics": m})
    assert RandomPolicy().propose({"metrics": m}) == first  # a resumed run, a restarted agent, a repair round
    assert policy.propose({"metrics": at(m, epoch=4)}).hyperparameters != first.hyperparameters
    assert policy.propose({"metrics": at(m, run_id="other")}).hyperparameters != first.hyperparameters


@pytest.mark.parametrize("metrics", [make_metrics([0.9, 0.91], lr=1e-3, dropout=0.2),
                                     make_regression_metrics([60.0, 59.0], lr=1e-2, dropout=0.1)])  # fmt: skip
def test_every_draw_lies_in_the_allowed_range_and_passes_the_checks_unclamped(metrics):
    ranges = allowed_ranges(metrics)
    for proposal in proposals(RandomPolicy(), metrics, 300):
        for name, value in proposal.hyperparameters.items():
            assert ranges[name][0] <= value <= ranges[name][1], (name, value)
        assert 0.0 <= proposal.alpha <= 1.0
        checked = check_proposal(proposal, metrics)
        assert checked.errors == [] and checked.command is not None
        assert checked.clamped == {}, checked.clamped  # a draw is never outside what the checks allow
        for op in checked.command.weight_ops or []:
            assert op.layer in metrics.param_shapes and OP_RANGES[op.op][0] <= op.value <= OP_RANGES[op.op][1]


def test_the_draws_are_roughly_uniform_log_uniform_for_the_learning_rate():
    m, n = make_metrics([0.9, 0.91], lr=1e-3, dropout=0.2), 2000
    drawn = proposals(RandomPolicy(), m, n)
    (lr_low, lr_high), (d_low, d_high) = allowed_ranges(m)["learning_rate"], allowed_ranges(m)["dropout"]

    def quarters(values, low, high, scale=lambda v: v):
        width = (scale(high) - scale(low)) / 4
        return Counter(min(int((scale(v) - scale(low)) / width), 3) for v in values)

    for counts in (quarters([p.hyperparameters["learning_rate"] for p in drawn], lr_low, lr_high, math.log),
                   quarters([p.hyperparameters["dropout"] for p in drawn], d_low, d_high),
                   quarters([p.alpha for p in drawn], 0.0, 1.0)):  # fmt: skip
        assert all(abs(counts[q] - n / 4) < 0.2 * n / 4 for q in range(4)), counts
    with_op = [p for p in drawn if p.weight_changes]
    assert abs(len(with_op) / n - WEIGHT_OP_PROBABILITY) < 0.05
    assert {c.op for p in with_op for c in p.weight_changes} == {"scale", "shrink", "noise"}
    layers = Counter(c.layer for p in with_op for c in p.weight_changes)
    assert set(layers) == set(m.param_shapes) and max(layers.values()) < 2 * min(layers.values())


def test_in_the_grid_command_space_it_draws_among_the_grid_choices():
    m = make_metrics([0.9, 0.91], lr=1e-3, dropout=0.2)
    choices = grid_choices(m)
    drawn = proposals(RandomPolicy("grid"), m, 200)
    for name in ("learning_rate", "dropout"):
        assert {p.hyperparameters[name] for p in drawn} == set(choices[name])
    assert {p.alpha for p in drawn} == set(choices["alpha"])
    for p in drawn:
        for change in p.weight_changes:
            assert change.value in OP_CHOICES[OP_VALUE_KEYS[change.op]]
        assert check_proposal(p, m, "grid").clamped == {}


def test_a_bad_command_space_is_refused_and_the_registry_builds_it_without_a_model(tmp_path):
    with pytest.raises(ValueError, match="command_space must be 'free' or 'grid', got command_space='chaos'"):
        RandomPolicy("chaos")
    controller = resolve_controller("random")
    assert not controller.uses_llm and not controller.reads_instructions and controller.needs_agent
    cfg = agent_config(controller="random", endpoint="tcp://127.0.0.1:1", recorder_endpoint="tcp://127.0.0.1:2",
                       run_dir=tmp_path)  # fmt: skip
    policy, judge = controller.build(cfg)
    assert isinstance(policy, RandomPolicy) and judge is None and policy.name == "random"
