"""Derived training trends shared by the prompter, the heuristic policy and the critic."""

from __future__ import annotations

from dataclasses import dataclass

from bus.messages import EpochMetrics


@dataclass(frozen=True)
class Trends:
    best_val_acc: float
    best_epoch: int
    epochs_since_best: int
    gap: float  # train_acc - val_acc now
    previous_gap: float  # the same one epoch earlier (equal to gap at epoch 1)


def training_trends(m: EpochMetrics) -> Trends:
    history = m.history or []
    best = max(history, key=lambda h: h.val_acc) if history else None
    best_val, best_epoch = (best.val_acc, best.epoch) if best else (m.val_acc, m.epoch)
    gap = m.train_acc - m.val_acc
    previous_gap = history[-2].train_acc - history[-2].val_acc if len(history) >= 2 else gap
    return Trends(best_val, best_epoch, m.epoch - best_epoch, gap, previous_gap)
