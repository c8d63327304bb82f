"""The CartPole baseline over seeds, without the processes: ``python -m tasks.cartpole --seeds 5``."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from tasks.cartpole.task import CartPoleTask


def _baseline(seeds: list[int], regime: str, epochs: int) -> None:
    """Train the baseline arm (default knobs, no modulation) for each seed in turn; one line per seed."""
    finals = []
    for seed in seeds:
        task = CartPoleTask()
        wall, cpu = time.perf_counter(), time.process_time()
        task.setup(regime, seed, torch.device("cpu"))
        returns = [task.train_epoch(epoch).metrics["eval_return_mean"] for epoch in range(1, epochs + 1)]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finals.append(returns[-1])
        line = {
            "seed": seed,
            "final_return": returns[-1],
            "best_return": max(returns),
            "returns": [round(r, 1) for r in returns],
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),
        }
        print(json.dumps(line), flush=True)
    print(
        f"{len(seeds)} seeds, regime {regime} x {epochs} epochs: final return mean {np.mean(finals):.1f}, "
        f"min {min(finals):.1f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.cartpole", description="Baseline PPO on CartPole-v1 over seeds (no agent)."
    )
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds, from --seed on (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--regime", choices=sorted(CartPoleTask.regimes), default=CartPoleTask.default_regime)
    parser.add_argument("--epochs", type=int, default=CartPoleTask.default_epochs)
    args = parser.parse_args(argv)
    _baseline(list(range(args.seed, args.seed + args.seeds)), args.regime, args.epochs)
