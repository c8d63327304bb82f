"""CartPole behind the task seam: :class:`CartPoleTask` (see ``tasks.cartpole`` for the protocol, the
determinism and the threads)."""

from __future__ import annotations

import math
from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import ConstantSchedule

from tasks.base import EpochResult, Hyperparameter, Task, cpu_copy, optimizer_state, optimizer_tensors, torch_threads
from tasks.cartpole.ppo import (
    ENV_ID,
    N_ENVS,
    PPO_SETTINGS,
    ROLLOUT_STEPS,
    SB3_TRAIN_METRICS,
    EpisodeCollector,
    MetricsLogger,
    epoch_seed,
    isolated_rngs,
    start_epoch,
)
from trainer.blend import BlendedOptimizer

CHECKPOINT_FORMAT = "reflectnet-task-cartpole-1"


class CartPoleTask(Task):
    """PPO (Stable-Baselines3) on CartPole-v1; see the module docstring for the protocol.

    Regimes are environment steps *per epoch* (``setup`` is not told the number of epochs, and, as an
    MNIST regime is what one epoch trains on, this is what one epoch consumes); the total budget is
    that times the epochs: ``"8k"`` × 12 epochs = 98,304 steps, RL-Zoo's 1e5 budget for this task.

    ``epoch_steps`` overrides the regime's steps per epoch (tests, quick runs); ``eval_episodes`` is
    the number of greedy evaluation episodes per epoch; ``torch_threads`` the intra-op torch threads
    while inside the task (restored on return).
    """

    name = "cartpole"
    description = (
        "Stable-Baselines3 PPO trains a small actor-critic network (two 64-unit tanh layers each for the "
        "policy and the value function) to balance a pole on a moving cart (Gymnasium CartPole-v1) from "
        "its own experience; the return is +1 per step the pole stays up, at most 500 per episode."
    )
    objective = "eval_return_mean"
    mode = "max"
    noise_band = 10.0  # a 2% change of the 500 ceiling: within the spread of 10 greedy evaluation episodes
    regimes: ClassVar[dict[str, int]] = {
        "2k": 2048,
        "4k": 4096,
        "8k": 8192,
    }  # environment steps per epoch, all environments together
    budget_unit = "environment steps per epoch"
    default_regime = "8k"
    default_epochs = 12
    hyperparameters = (
        Hyperparameter(
            name="learning_rate",
            default=1e-3,
            low=1e-5,
            high=3e-3,
            scale="log",
            step=2.0,
            max_change=3.0,
            description="Adam step size of the PPO update, constant within an epoch",
        ),
        Hyperparameter(
            name="ent_coef",
            default=0.0,
            low=0.0,
            high=0.05,
            scale="linear",
            step=0.005,
            max_change=0.01,
            description="weight of the entropy bonus in the PPO loss: higher keeps the policy exploring",
        ),
        Hyperparameter(
            name="clip_range",
            default=0.2,
            low=0.05,
            high=0.4,
            scale="linear",
            step=0.05,
            max_change=0.1,
            description="PPO clip range: how far one update may move the action probabilities (ratio 1 ± clip)",
        ),
    )

    def __init__(self, epoch_steps: int | None = None, eval_episodes: int = 10, torch_threads: int = 1):
        if epoch_steps is not None and (epoch_steps <= 0 or epoch_steps % ROLLOUT_STEPS):
            raise ValueError(f"epoch_steps must be a positive multiple of the rollout size {ROLLOUT_STEPS}")
        if eval_episodes < 1:
            raise ValueError(f"eval_episodes must be at least 1, got {eval_episodes=}")
        if torch_threads < 1:
            raise ValueError(f"torch_threads must be at least 1, got {torch_threads=}")
        self._epoch_steps_override = epoch_steps
        self.eval_episodes = eval_episodes
        self.torch_threads = torch_threads
        self.ppo: PPO | None = None  # the SB3 algorithm, after setup
        self.epochs_done = 0

    # -- setup

    def setup(self, regime: str, seed: int, device: torch.device, order_seed: int | None = None) -> None:
        """Environments and PPO; ``seed`` seeds the policy's initial weights and the evaluation episodes,
        ``order_seed`` (None: ``seed``) each epoch's rollouts: training-environment resets, sampled actions,
        minibatch order (:func:`tasks.cartpole.ppo.start_epoch`). ValueError for an unknown regime."""
        if regime not in self.regimes:
            raise ValueError(f"unknown regime {regime!r} for task {self.name!r}; known: {sorted(self.regimes)}")
        self.regime, self.seed = regime, int(seed)
        self.order_seed = self.seed if order_seed is None else int(order_seed)
        self.epoch_steps = self._epoch_steps_override or self.regimes[regime]
        self.epochs_done = 0
        with torch_threads(self.torch_threads), isolated_rngs():
            env = make_vec_env(ENV_ID, n_envs=N_ENVS, seed=self.seed)  # each wrapped in a Monitor
            defaults = {knob.name: knob.default for knob in self.hyperparameters}
            self.ppo = PPO(
                "MlpPolicy",
                env,
                learning_rate=defaults["learning_rate"],
                ent_coef=defaults["ent_coef"],
                clip_range=defaults["clip_range"],
                seed=self.seed,
                device=device,
                verbose=0,
                **PPO_SETTINGS,
            )
        self._logger = MetricsLogger()
        self.ppo.set_logger(self._logger)  # before learn(): else learn() configures its own printing logger
        policy = self.ppo.policy
        self._params = dict(policy.named_parameters())
        inner = policy.optimizer
        self._blended = BlendedOptimizer(inner, self._params)
        policy.optimizer = self._blended
        # Optimizer steps: counted on the wrapped Adam (BlendedOptimizer.step runs it exactly once).
        self._steps_taken = 0
        inner.register_step_post_hook(self._count_step)
        # Gradient norms: each parameter's gradient as the backward pass leaves it, before SB3 clips the
        # global norm to max_grad_norm (0.5) — the raw signal, not the clipped one Adam consumes.
        self._grad_norm_sums = {name: torch.zeros((), device=p.device) for name, p in self._params.items()}
        for name, param in self._params.items():
            param.register_post_accumulate_grad_hook(self._grad_norm_hook(name))
        self._knobs: dict[str, float] = {}
        self.set_hyperparameters(defaults)

    def _count_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self._steps_taken += 1

    def _grad_norm_hook(self, name: str):
        total = self._grad_norm_sums[name]

        def hook(param: torch.Tensor) -> None:
            total.add_(torch.linalg.vector_norm(param.grad.detach()))

        return hook

    # -- the contract's accessors

    @property
    def model(self) -> torch.nn.Module:
        """The SB3 ``ActorCriticPolicy``: ``mlp_extractor.policy_net.{0,2}``, ``mlp_extractor.value_net.{0,2}``
        (64-unit tanh layers), ``action_net`` (2 logits) and ``value_net`` (1 value)."""
        self._require_setup()
        return self.ppo.policy

    @property
    def optimizer(self) -> BlendedOptimizer:
        self._require_setup()
        return self._blended

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch: rollouts × PPO passes × minibatches per rollout (exact: no
        ``target_kl`` early stop is configured); 640 for the 8k regime."""
        self._require_setup()
        rollouts = self.epoch_steps // ROLLOUT_STEPS
        minibatches = math.ceil(ROLLOUT_STEPS / PPO_SETTINGS["batch_size"])
        return rollouts * PPO_SETTINGS["n_epochs"] * minibatches

    def _require_setup(self) -> None:
        if self.ppo is None:
            raise RuntimeError("call setup(regime, seed, device) first")

    # -- knobs

    def set_hyperparameters(self, values: dict[str, float]) -> None:
        """Use ``values`` from the next ``train_epoch`` on. The values are the trainer's, checked against the
        declarations already (``trainer.contract``)."""
        self._require_setup()
        for name, value in values.items():
            value = float(value)
            if name == "learning_rate":
                self.ppo.learning_rate = value
                self.ppo.lr_schedule = ConstantSchedule(value)
            elif name == "ent_coef":
                self.ppo.ent_coef = value
            elif name == "clip_range":
                self.ppo.clip_range = ConstantSchedule(value)
            self._knobs[name] = value

    def hyperparameter_values(self) -> dict[str, float]:
        """The knob values the next epoch uses."""
        return dict(self._knobs)

    # -- one epoch

    def train_epoch(self, epoch: int) -> EpochResult:
        """``epoch_steps`` environment steps of PPO, then :meth:`evaluate`. ``epoch`` seeds the epoch and must come
        after the epochs done (ValueError otherwise): the next one, or a later one after the trainer rolled the task
        back to an earlier epoch's checkpoint (the run's numbering goes on). Metrics (floats):

        * ``eval_return_mean`` / ``eval_return_std`` / ``eval_episode_length_mean``: greedy evaluation
          episodes (return = summed reward, length in steps);
        * ``train_return_mean`` / ``train_episode_length_mean``: training episodes that finished in this
          epoch (stochastic actions; NaN when none did), ``episodes`` their count;
        * ``policy_gradient_loss``, ``value_loss``, ``entropy_loss``, ``approx_kl``, ``clip_fraction``,
          ``explained_variance``, ``learning_rate``, ``clip_range``: SB3's ``train/*`` values, mean over
          the epoch's rollouts; ``ent_coef``: the entropy coefficient used;
        * ``env_steps``: environment steps since setup, all environments together.

        Vectors: ``eval_episode_returns``, ``eval_episode_lengths`` (one per evaluation episode).
        ``grad_norms``: per policy parameter, the mean over the epoch's optimizer steps of its gradient's
        L2 norm before clipping. ``steps``: optimizer steps taken (:meth:`steps_per_epoch`).
        """
        self._require_setup()
        if epoch <= self.epochs_done:
            raise ValueError(f"epoch {epoch} after epoch {self.epochs_done}: an epoch must come after those done")
        episodes = self._learn_epoch(epoch)
        steps = self._steps_taken
        train = self._logger.pop_means()
        evaluation = self.evaluate(epoch)
        self.epochs_done = epoch
        metrics = self._epoch_metrics(evaluation, episodes, train)
        grad_norms = {name: float(total) / steps for name, total in self._grad_norm_sums.items()}
        vectors = {
            "eval_episode_returns": [float(r) for r in evaluation["returns"]],
            "eval_episode_lengths": [float(n) for n in evaluation["lengths"]],
        }
        return EpochResult(metrics=metrics, grad_norms=grad_norms, vectors=vectors, steps=steps)

    def _learn_epoch(self, epoch: int) -> EpisodeCollector:
        """Zero the step and gradient-norm counters, reseed from ``(order seed, epoch)`` and run ``epoch_steps``
        environment steps of ``PPO.learn`` (torch threads set, global RNGs isolated). Returns the training
        episodes that finished; raises RuntimeError when the optimizer steps differ from
        :meth:`steps_per_epoch` (the blend's per-step delta would not add up)."""
        ppo = self.ppo
        self._steps_taken = 0
        for total in self._grad_norm_sums.values():
            total.zero_()
        episodes = EpisodeCollector()
        with torch_threads(self.torch_threads), isolated_rngs():
            start_epoch(ppo, self.order_seed, epoch)
            ppo.learn(total_timesteps=self.epoch_steps, callback=episodes, log_interval=None, reset_num_timesteps=False)
        steps = self._steps_taken
        if steps != self.steps_per_epoch():
            raise RuntimeError(
                f"PPO took {steps} optimizer steps, steps_per_epoch() said {self.steps_per_epoch()}: "
                "the blend's per-step delta would not add up to the epoch's delta"
            )
        return episodes

    def _epoch_metrics(
        self, evaluation: dict[str, np.ndarray], episodes: EpisodeCollector, train: dict[str, float]
    ) -> dict[str, float]:
        """The epoch's scalar metrics (see :meth:`train_epoch`) from the greedy ``evaluation``, the finished
        training ``episodes`` and SB3's ``train/*`` means ``train``; the knob and step count from the model."""
        return {
            "eval_return_mean": float(np.mean(evaluation["returns"])),
            "eval_return_std": float(np.std(evaluation["returns"])),
            "eval_episode_length_mean": float(np.mean(evaluation["lengths"])),
            "train_return_mean": float(np.mean(episodes.returns)) if episodes.returns else math.nan,
            "train_episode_length_mean": float(np.mean(episodes.lengths)) if episodes.lengths else math.nan,
            "episodes": float(len(episodes.returns)),
            **{name: train[name] for name in SB3_TRAIN_METRICS},
            "ent_coef": float(self.ppo.ent_coef),
            "env_steps": float(self.ppo.num_timesteps),
        }

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, np.ndarray]:
        """``eval_episodes`` greedy episodes of the current policy, batched: one policy forward per time
        step for all episodes still running. Episode k of epoch e starts from
        ``reset(seed=epoch_seed(seed, e, 1) + k)`` on its own CartPole-v1; greedy actions draw no random
        numbers, so the result depends only on the weights and ``(seed, epoch)``.

        Returns ``returns`` (float [K], summed reward) and ``lengths`` (int [K], steps).
        """
        self._require_setup()
        k = self.eval_episodes
        base = epoch_seed(self.seed, epoch, 1)
        envs = [gym.make(ENV_ID) for _ in range(k)]
        returns = np.zeros(k)
        lengths = np.zeros(k, dtype=np.int64)
        running = np.ones(k, dtype=bool)
        policy = self.ppo.policy
        try:
            with torch_threads(self.torch_threads):
                obs = np.stack([env.reset(seed=base + i)[0] for i, env in enumerate(envs)])  # [K, 4]
                policy.set_training_mode(False)
                while running.any():
                    idx = np.flatnonzero(running)
                    actions, _ = policy.predict(obs[idx], deterministic=True)
                    for j, action in zip(idx, actions):
                        obs[j], reward, terminated, truncated, _ = envs[j].step(int(action))
                        returns[j] += reward
                        lengths[j] += 1
                        if terminated or truncated:
                            running[j] = False
        finally:
            for env in envs:
                env.close()
        return {"returns": returns, "lengths": lengths}

    # -- checkpoints

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors: ``policy.<name>`` (the policy's state dict), ``optim.<index>.<slot>`` (Adam's moments and
        step counts), ``blend.<name>`` (the optimizer's current per-step deltas). Meta (JSON): the format,
        regime, seed, order seed, epoch steps, epochs done, environment steps, SB3's update count, the knob values,
        alpha and Adam's non-tensor state. Environments and RNGs need no state: every epoch reseeds them."""
        self._require_setup()
        tensors = {f"policy.{name}": cpu_copy(value) for name, value in self.ppo.policy.state_dict().items()}
        optim, optim_scalars = optimizer_tensors(self._blended)
        tensors |= optim
        for name, delta in self._blended.step_deltas.items():
            tensors[f"blend.{name}"] = cpu_copy(delta)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "regime": self.regime,
            "seed": self.seed,
            "order_seed": self.order_seed,
            "epoch_steps": self.epoch_steps,
            "epochs_done": self.epochs_done,
            "num_timesteps": int(self.ppo.num_timesteps),
            "n_updates": int(self.ppo._n_updates),
            "hyperparameters": dict(self._knobs),
            "alpha": float(self._blended.alpha),
            "optim_scalars": optim_scalars,
        }
        return tensors, meta

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """The inverse of :meth:`checkpoint_state`, after ``setup`` with the same regime and seed (ValueError
        otherwise). The blend's per-step deltas come back as they were, bit for bit."""
        self._require_setup()
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} checkpoint: format {meta.get('format')!r}")
        mine = {"regime": self.regime, "seed": self.seed, "order_seed": self.order_seed,
                "epoch_steps": self.epoch_steps}  # fmt: skip
        # A checkpoint from before order seeds drew its rollouts from the seed.
        theirs = {key: meta.get(key, meta["seed"]) if key == "order_seed" else meta[key] for key in mine}
        if mine != theirs:
            raise ValueError(f"checkpoint is from {theirs}, this task was set up as {mine}")
        policy = self.ppo.policy
        policy.load_state_dict({k.removeprefix("policy."): v for k, v in tensors.items() if k.startswith("policy.")})
        state = optimizer_state(tensors, meta["optim_scalars"], list(self._params.values()))
        self._blended.load_state_dict({"state": state, "param_groups": self._blended.state_dict()["param_groups"]})
        self.set_hyperparameters(meta["hyperparameters"])
        for group in self._blended.param_groups:  # as the last train() left them; the next one rewrites them
            group["lr"] = self._knobs["learning_rate"]
        step_deltas = {k.removeprefix("blend."): v for k, v in tensors.items() if k.startswith("blend.")}
        unknown = sorted(set(step_deltas) - set(self._params))
        if unknown:
            raise ValueError(f"checkpoint blends parameters this policy lacks: {unknown}")
        self._blended.alpha = float(meta["alpha"])
        self._blended.step_deltas = {name: d.to(self._params[name]) for name, d in step_deltas.items()}
        self.epochs_done = int(meta["epochs_done"])
        self.ppo.num_timesteps = int(meta["num_timesteps"])
        self.ppo._n_updates = int(meta["n_updates"])
