"""Reinforcement learning behind the task seam: Stable-Baselines3 PPO on Gymnasium's CartPole-v1.

One *epoch* is ``epoch_steps`` environment steps of PPO training (the regime; summed over the 8
parallel environments), run as one ``PPO.learn`` call that continues the previous ones
(``reset_num_timesteps=False``), then a seeded, greedy evaluation of ``eval_episodes`` episodes on
separate environments. The objective is the mean evaluation return (``max``; an episode returns
+1 per step the pole stays up, so 500, the time limit, is the ceiling).

PPO settings are RL-Zoo's tuned set for CartPole-v1 (rl-baselines3-zoo ``hyperparams/ppo.yml``) —
8 environments × 32 steps = one rollout of 256 transitions, one minibatch of 256, 20 passes per
rollout, gamma 0.98, GAE lambda 0.8 — except that Zoo's linearly decaying learning rate and clip
range are constants here (1e-3 and 0.2): they are the agent's knobs, and a ``lin_`` schedule would
restart at every chunked ``learn`` call anyway. An epoch of 8192 steps is 32 rollouts × 20 = 640
optimizer steps (Adam, eps 1e-5, gradients clipped to norm 0.5 by SB3).

Knobs (set between epochs): ``learning_rate`` (``model.lr_schedule``, which SB3 writes into every
Adam param group at the start of each ``train()``), ``ent_coef`` (read by ``PPO.train``) and
``clip_range`` (``PPO.clip_range``, a schedule called once per ``train()``). Weight modulation goes
through :class:`trainer.blend.BlendedOptimizer`, installed as ``ppo.policy.optimizer``; SB3 calls
its ``zero_grad``/``step`` and sets its ``param_groups[i]["lr"]`` as it would Adam's.

Determinism and resume: at the start of every epoch the process-global RNGs PPO draws from (Python's
``random``, NumPy's, torch's: action sampling, minibatch order) and the training environments are
reseeded from ``(order seed, epoch)`` and the environments reset (the order seed is the seed unless an A/A arm
sets another; the initial weights and the evaluation episodes stay on the seed). An epoch therefore depends only
on the weights, the Adam state, the knobs, the blend and ``(order seed, epoch)``, and a checkpoint of those
(tensors and JSON; no pickle) continues bit-exactly. The price: an episode in progress at an epoch
boundary is cut off (PPO bootstraps its value, as at a time limit) and not counted in
``train_return_mean``. The global RNG states and torch's intra-op thread count are saved before and
restored after every call into the task, so the task neither sees nor disturbs other code's streams.

Threads: the task runs torch with ``torch_threads`` (default 1) intra-op threads while inside its
methods. For a 64-unit MLP and 256-row minibatches, thread hand-offs cost more than they save
(measured: 45-57 s CPU for 12 epochs of 8192 steps on one thread), and a fixed count keeps float
reductions — and so resumed runs — bit-identical. ``torch.set_num_threads`` is process-wide, so the
previous count is restored on the way out: code sharing the process (other tasks, tests) keeps its own.

Run the baseline over seeds: ``python -m tasks.cartpole --seeds 5``.
"""

from tasks.cartpole.ppo import ENV_ID, N_ENVS, PPO_SETTINGS, ROLLOUT_STEPS, SB3_TRAIN_METRICS, epoch_seed, start_epoch
from tasks.cartpole.task import CHECKPOINT_FORMAT, CartPoleTask

__all__ = [
    "CHECKPOINT_FORMAT",
    "CartPoleTask",
    "ENV_ID",
    "N_ENVS",
    "PPO_SETTINGS",
    "ROLLOUT_STEPS",
    "SB3_TRAIN_METRICS",
    "epoch_seed",
    "start_epoch",
]
