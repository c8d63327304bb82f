"""Policies behind the controller node. A policy reads the graph state and answers with the text of
a command, exactly as a chat model would; the validator treats every policy's answer the same way.

``heuristic`` is the deterministic rule policy: the no-LLM peer baseline and the fast test path.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Protocol

from agents.state import AgentState
from agents.trends import training_trends

PLATEAU_EPOCHS = 2  # epochs without a new best validation accuracy before the LR is lowered
LR_DECAY = 0.5
MIN_LR = 1e-5
GAP_THRESHOLD = 0.03  # train/val accuracy gap that counts as overfitting when it widens
DROPOUT_STEP = 0.1
MAX_HEURISTIC_DROPOUT = 0.5


@dataclass(frozen=True)
class ControllerAnswer:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None  # the model call failed ("Type: message"); ``text`` is then empty
    finish_reason: str | None = None  # why a model stopped: "stop", "length" (the token cap), ...
    adaptations: tuple[str, ...] = ()  # what this call changed in the requests to the endpoint, and why


class Policy(Protocol):
    """Contract: ``name`` is recorded as the decision's controller; ``propose`` returns the answer
    text for the current state (it may read ``state["feedback"]`` on a repair round)."""

    name: str

    def propose(self, state: AgentState) -> ControllerAnswer: ...


class HeuristicPolicy:
    """Validation plateau -> lower the learning rate; widening train/val gap -> more dropout;
    steady gains -> keep. A harmful verdict on the previous change -> hold still for an epoch."""

    name = "heuristic"

    def propose(self, state: AgentState) -> ControllerAnswer:
        m = state["metrics"]
        t = training_trends(m)
        lr, dropout = m.lr, m.dropout
        previous_harmful = m.previous_reflection is not None and m.previous_reflection.verdict == "harmful"
        if previous_harmful:
            rationale = "the previous change was judged harmful: hold the hyperparameters for one epoch"
        elif t.epochs_since_best >= PLATEAU_EPOCHS and lr * LR_DECAY >= MIN_LR:
            lr = lr * LR_DECAY
            rationale = (
                f"validation plateau: no new best for {t.epochs_since_best} epochs "
                f"(best {t.best_val_acc:.4f} at epoch {t.best_epoch}); lower the learning rate"
            )
        elif t.gap > GAP_THRESHOLD and t.gap > t.previous_gap and dropout + DROPOUT_STEP <= MAX_HEURISTIC_DROPOUT:
            dropout = round(dropout + DROPOUT_STEP, 4)
            rationale = f"train/val gap widened from {t.previous_gap:.4f} to {t.gap:.4f}: more dropout"
        else:
            rationale = "steady: keep the current hyperparameters"
        command = {"dropout": dropout, "learning_rate": lr, "alpha": m.alpha, "rationale": rationale}
        return ControllerAnswer(json.dumps(command))


class PlateauPolicy:
    """torch's ``ReduceLROnPlateau`` as a peer controller: the real scheduler, replayed over the run's
    validation losses, so its semantics (threshold, patience, cooldown, min_lr) are torch's own.

    Defaults differ from torch's (factor 0.1, patience 10) because ReflectNet runs are tens of epochs:
    factor 0.5, patience 2. Dropout and alpha are never changed.
    """

    name = "plateau"

    def __init__(self, factor: float = 0.5, patience: int = 2, threshold: float = 1e-4, min_lr: float = MIN_LR):
        self.factor, self.patience, self.threshold, self.min_lr = factor, patience, threshold, min_lr

    def propose(self, state: AgentState) -> ControllerAnswer:
        import torch

        m = state["metrics"]
        initial_lr = m.history[0].lr if m.history else m.lr
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=initial_lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=self.factor,
            patience=self.patience,
            threshold=self.threshold,
            min_lr=self.min_lr,
        )
        for h in m.history:
            scheduler.step(h.val_loss)
        lr = optimizer.param_groups[0]["lr"]
        reductions = 0 if lr == initial_lr else round(math.log(lr / initial_lr) / math.log(self.factor))
        rationale = (
            f"ReduceLROnPlateau(factor={self.factor}, patience={self.patience}): best val_loss {scheduler.best:.4f}, "
            f"{scheduler.num_bad_epochs} bad epoch(s), {reductions} reduction(s) so far"
        )
        command = {"dropout": m.dropout, "learning_rate": lr, "alpha": m.alpha, "rationale": rationale}
        return ControllerAnswer(json.dumps(command))
