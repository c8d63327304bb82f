"""The CartPole task (SB3 PPO behind the Task contract), on a tiny budget: epochs of 1024 environment
steps (4 rollouts × 20 passes = 80 optimizer steps, about half a second each on one core)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from tasks.base import Task
from tasks.cartpole import ENV_ID, N_ENVS, PPO_SETTINGS, CartPoleTask, start_epoch
from trainer.blend import BlendedOptimizer
from trainer.contract import set_hyperparameters

CPU = torch.device("cpu")
EPOCH_STEPS = 1024
STEPS = 80  # optimizer steps per tiny epoch


def _task(seed: int = 0, **kwargs) -> CartPoleTask:
    task = CartPoleTask(epoch_steps=EPOCH_STEPS, **kwargs)
    task.setup("8k", seed, CPU)
    return task


def _weights(task: CartPoleTask) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in task.model.state_dict().items()}


def _assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def _adam_tensors(optimizer) -> dict[str, torch.Tensor]:
    return {
        f"{index}.{slot}": value.clone()
        for index, slots in optimizer.state_dict()["state"].items()
        for slot, value in slots.items()
    }


def test_declarations_follow_the_contract():
    assert issubclass(CartPoleTask, Task)
    assert (CartPoleTask.name, CartPoleTask.objective, CartPoleTask.mode) == ("cartpole", "eval_return_mean", "max")
    assert CartPoleTask.regimes[CartPoleTask.default_regime] == 8192 and CartPoleTask.default_epochs == 12
    assert all(steps % 256 == 0 for steps in CartPoleTask.regimes.values())
    knobs = {k.name: k for k in CartPoleTask.hyperparameters}
    assert set(knobs) == {"learning_rate", "ent_coef", "clip_range"}
    assert knobs["learning_rate"].scale == "log" and knobs["learning_rate"].default == 1e-3
    assert (knobs["ent_coef"].low, knobs["ent_coef"].high, knobs["ent_coef"].default) == (0.0, 0.05, 0.0)
    assert knobs["clip_range"].scale == "linear" and knobs["clip_range"].default == 0.2


def test_setup_builds_the_policy_and_installs_the_blended_optimizer():
    task = CartPoleTask()
    task.setup("8k", 0, CPU)
    assert task.steps_per_epoch() == 640  # 32 rollouts of 256 transitions × 20 passes × 1 minibatch
    assert isinstance(task.optimizer, BlendedOptimizer) and task.ppo.policy.optimizer is task.optimizer
    assert task.model is task.ppo.policy
    assert set(task.optimizer.params) == {name for name, _ in task.model.named_parameters()}
    assert [g["lr"] for g in task.optimizer.param_groups] == [1e-3]
    with pytest.raises(ValueError, match="unknown regime"):
        CartPoleTask().setup("1M", 0, CPU)
    with pytest.raises(ValueError, match="multiple of the rollout size"):
        CartPoleTask(epoch_steps=1000)
    # The trainer holds the task to its declaration (trainer.contract); the task itself re-checks nothing.
    with pytest.raises(ValueError, match="outside"):
        set_hyperparameters(task, {"clip_range": 0.9})
    with pytest.raises(ValueError, match="no hyperparameter"):
        set_hyperparameters(task, {"dropout": 0.1})
    assert task.hyperparameter_values() == {"learning_rate": 1e-3, "ent_coef": 0.0, "clip_range": 0.2}
    with pytest.raises(ValueError, match="must come after those done"):
        task.train_epoch(0)


def test_without_deltas_the_task_trains_bit_identically_to_plain_sb3():
    seed = 3
    task = _task(seed)
    results = [task.train_epoch(epoch) for epoch in (1, 2)]
    assert [r.steps for r in results] == [STEPS, STEPS]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the task's thread count: reductions must match bit for bit
    try:
        plain = PPO(
            "MlpPolicy",
            make_vec_env(ENV_ID, n_envs=N_ENVS, seed=seed),
            learning_rate=1e-3,
            ent_coef=0.0,
            clip_range=0.2,
            seed=seed,
            device=CPU,
            verbose=0,
            **PPO_SETTINGS,
        )
        for epoch in (1, 2):
            start_epoch(plain, seed, epoch)
            plain.learn(total_timesteps=EPOCH_STEPS, log_interval=None, reset_num_timesteps=False)
    finally:
        torch.set_num_threads(threads)
    assert isinstance(plain.policy.optimizer, torch.optim.Adam)
    _assert_same_tensors(_weights(task), {k: v.detach() for k, v in plain.policy.state_dict().items()})
    _assert_same_tensors(_adam_tensors(task.optimizer), _adam_tensors(plain.policy.optimizer))
    assert plain.num_timesteps == task.ppo.num_timesteps == 2 * EPOCH_STEPS
    assert results[1].metrics["env_steps"] == 2 * EPOCH_STEPS


def test_knobs_are_used_by_the_next_epoch():
    steered, control = _task(), _task()
    steered.train_epoch(1)
    control.train_epoch(1)
    _assert_same_tensors(_weights(steered), _weights(control))
    steered.set_hyperparameters({"learning_rate": 3e-4, "ent_coef": 0.01, "clip_range": 0.1})
    control.set_hyperparameters({"learning_rate": 3e-4, "clip_range": 0.1})  # ent_coef stays 0
    result = steered.train_epoch(2)
    control.train_epoch(2)
    # Values SB3 read inside PPO.train(): the learning rate it wrote into Adam, the clip range it used.
    assert [g["lr"] for g in steered.optimizer.param_groups] == [3e-4]
    assert result.metrics["learning_rate"] == 3e-4 and result.metrics["clip_range"] == 0.1
    assert result.metrics["ent_coef"] == 0.01 and steered.ppo.ent_coef == 0.01
    assert steered.hyperparameter_values() == {"learning_rate": 3e-4, "ent_coef": 0.01, "clip_range": 0.1}
    # The entropy bonus entered the loss: the same epoch without it ends elsewhere.
    moved = [name for name, w in _weights(steered).items() if not torch.equal(w, _weights(control)[name])]
    assert "action_net.weight" in moved


def test_alpha_one_moves_the_parameter_by_the_delta_over_an_epoch():
    task = _task(seed=1)
    task.train_epoch(1)
    name = "action_net.weight"
    before = _weights(task)
    delta = -0.02 * before[name]  # "scale by 0.98" over one epoch
    task.optimizer.set_blend(1.0, {name: delta}, task.steps_per_epoch())
    result = task.train_epoch(2)
    after = _weights(task)
    assert result.steps == STEPS
    torch.testing.assert_close(after[name] - before[name], delta, rtol=0.0, atol=1e-6)
    assert not torch.equal(after["action_net.bias"], before["action_net.bias"])  # no delta: Adam's step
    assert set(result.grad_norms) == set(before) and all(v > 0 for v in result.grad_norms.values())


def test_a_restored_task_continues_bit_for_bit(tmp_path):
    name = "mlp_extractor.policy_net.2.weight"

    def steer(task: CartPoleTask) -> None:  # before epoch 2, as an agent's command would
        task.set_hyperparameters({"learning_rate": 5e-4, "ent_coef": 0.005, "clip_range": 0.15})
        delta = -0.02 * task.model.get_parameter(name).detach()
        task.optimizer.set_blend(0.3, {name: delta}, task.steps_per_epoch())

    straight = _task(seed=1)
    straight.train_epoch(1)
    steer(straight)
    straight.train_epoch(2)
    tensors, meta = straight.checkpoint_state()
    path = tmp_path / "cartpole.safetensors"
    save_file(tensors, str(path), metadata={"state": json.dumps(meta)})  # what a trainer writes: no pickle
    expected = straight.train_epoch(3)

    resumed = _task(seed=1)
    with safe_open(str(path), framework="pt") as f:
        resumed.restore_state({k: f.get_tensor(k) for k in list(f.keys())}, json.loads(f.metadata()["state"]))
    assert resumed.hyperparameter_values() == straight.hyperparameter_values()
    got = resumed.train_epoch(3)  # the blend set before epoch 2 is still in force, as in the straight run
    assert got.metrics == expected.metrics and got.grad_norms == expected.grad_norms
    assert got.vectors == expected.vectors and got.steps == expected.steps
    _assert_same_tensors(_weights(resumed), _weights(straight))
    _assert_same_tensors(_adam_tensors(resumed.optimizer), _adam_tensors(straight.optimizer))

    other_seed = _task(seed=2)
    with pytest.raises(ValueError, match="checkpoint is from"):
        other_seed.restore_state(tensors, meta)

    # A rollback: the trainer restores epoch 2's checkpoint after epoch 3 and trains on as epoch 4 (the study's CartPole
    # run of seed 100 with the model failed here: "epoch 12 follows epoch 4; expected 5").
    straight.restore_state(tensors, meta)
    assert straight.train_epoch(4).steps == straight.steps_per_epoch()


def test_evaluation_is_seeded_deterministic_and_leaves_global_state_alone():
    task = _task(seed=4)
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    threads = torch.get_num_threads()
    result = task.train_epoch(1)
    first, again = task.evaluate(1), task.evaluate(1)
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2]) and torch.get_num_threads() == threads
    np.testing.assert_array_equal(first["returns"], again["returns"])
    np.testing.assert_array_equal(first["lengths"], again["lengths"])
    assert result.vectors["eval_episode_returns"] == first["returns"].tolist()
    assert len(first["returns"]) == 10 and result.metrics["eval_return_mean"] == first["returns"].mean()
    # CartPole pays +1 per step: each return is its episode's length.
    np.testing.assert_array_equal(first["returns"], first["lengths"])
    # A fresh task with the same seed evaluates the same policy on the same episodes.
    twin = _task(seed=4)
    twin.train_epoch(1)
    np.testing.assert_array_equal(twin.evaluate(1)["returns"], first["returns"])
