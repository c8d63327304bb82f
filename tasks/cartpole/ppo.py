"""The PPO side of the CartPole task: RL-Zoo's settings, per-epoch reseeding, and the SB3 logger and callback
that collect an epoch's training values and finished episodes (``tasks.cartpole.task`` uses them)."""

from __future__ import annotations

import contextlib
import random
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

ENV_ID = "CartPole-v1"

N_ENVS = 8
# RL-Zoo's CartPole-v1 PPO set (hyperparams/ppo.yml), schedules made constant; keyword arguments of PPO().
PPO_SETTINGS: dict[str, Any] = {
    "n_steps": 32,  # per environment per rollout: a rollout is N_ENVS * n_steps = 256 transitions
    "batch_size": 256,
    "n_epochs": 20,  # passes over each rollout
    "gamma": 0.98,
    "gae_lambda": 0.8,
}
ROLLOUT_STEPS = N_ENVS * PPO_SETTINGS["n_steps"]

# The SB3 ``train/*`` values kept as epoch metrics (each is logged once per rollout; the epoch reports their mean).
SB3_TRAIN_METRICS = (
    "policy_gradient_loss",
    "value_loss",
    "entropy_loss",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
    "learning_rate",
    "clip_range",
)


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A 31-bit seed for ``(run seed, epoch, stream)``: stream 0 seeds training, stream 1 evaluation."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0] & 0x7FFFFFFF)


def start_epoch(ppo: PPO, seed: int, epoch: int) -> None:
    """Reseed the global RNGs, the action space and the training environments from ``(seed, epoch)``
    and reset the environments: what makes an epoch depend on nothing before it but the model state.

    Touches the process-global ``random``, NumPy and torch RNGs (SB3's ``set_random_seed``); the task
    calls it inside :func:`isolated_rngs`.
    """
    ppo.set_random_seed(epoch_seed(seed, epoch, 0))  # the VecEnv applies its seeds at the next reset
    ppo._last_obs = ppo.env.reset()  # [N_ENVS, 4] observations
    ppo._last_episode_starts = np.ones((ppo.env.num_envs,), dtype=bool)


@contextlib.contextmanager
def isolated_rngs() -> Iterator[None]:
    """Run the body with the caller's global RNG states (random, NumPy, torch, CUDA) saved and restored."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


class MetricsLogger(Logger):
    """An SB3 Logger with no output formats that keeps the ``train/*`` values of :data:`SB3_TRAIN_METRICS`.

    SB3 records each once per ``train()`` call, i.e. once per rollout; :meth:`pop_means` averages them.
    """

    def __init__(self) -> None:
        super().__init__(folder=None, output_formats=[])
        self.history: dict[str, list[float]] = defaultdict(list)

    def record(self, key: str, value: Any, exclude: str | tuple[str, ...] | None = None) -> None:
        super().record(key, value, exclude)
        name = key.removeprefix("train/")
        if name in SB3_TRAIN_METRICS and key.startswith("train/"):
            self.history[name].append(float(value))

    def pop_means(self) -> dict[str, float]:
        means = {name: float(np.mean(values)) for name, values in self.history.items()}
        self.history.clear()
        return means


class EpisodeCollector(BaseCallback):
    """Returns and lengths of the training episodes that finish during ``learn`` (SB3's Monitor puts them
    in ``info["episode"]``: ``r`` the return, ``l`` the length in steps)."""

    def __init__(self) -> None:
        super().__init__()
        self.returns: list[float] = []
        self.lengths: list[int] = []

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            episode = info.get("episode")
            if episode is not None:
                self.returns.append(float(episode["r"]))
                self.lengths.append(int(episode["l"]))
        return True
