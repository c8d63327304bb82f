"""Policies behind the controller node. A policy reads the graph state and answers with the text of
a command, exactly as a chat model would; the validator treats every policy's answer the same way.

A command's text is one flat JSON object: a field per knob of the task (``EpochMetrics.task``), ``alpha``,
optionally ``weight_modulation``, and ``rationale``. ``heuristic`` is the deterministic rule policy (the
no-LLM peer baseline and the fast test path), ``plateau`` torch's ``ReduceLROnPlateau``, ``replay`` the
commands of a recorded run. Which controller name builds which policy is ``agents.controllers``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Protocol

from agents.state import AgentState
from agents.trends import Trends, current_values, objective_decimals, step_digits, training_trends
from bus.messages import EpochMetrics, TaskSpec, UpdateCommand

LEARNING_RATE = "learning_rate"  # the knob the plateau rules lower, when a task declares it
PLATEAU_EPOCHS = 2  # epochs without a new best objective before the learning rate is lowered
LR_DECAY = 0.5
MIN_LR = 1e-5  # the heuristic and plateau never lower the learning rate below this (nor below the knob's low)
# The generalization gap counts as overfitting, when it widens, beyond this many noise bands of the
# objective: a gap 15 times the smallest change the task calls real (0.03 for MNIST's band of 0.002,
# the rule's original threshold; 7.5 RMSE for the diabetes task's band of 0.5).
GAP_NOISE_BANDS = 15
REGULARISERS = ("dropout", "weight_decay")  # raised in this order of preference against a widening gap
MAX_HEURISTIC_DROPOUT = 0.5


@dataclass(frozen=True)
class ControllerAnswer:
    """What a policy (or a chat model) answers: the command ``text`` for the validator, the model's token
    counts (None for a policy without a model), and how the call went."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None  # the model call failed ("Type: message"); ``text`` is then empty
    finish_reason: str | None = None  # why a model stopped: "stop", "length" (the token cap), ...
    adaptations: tuple[str, ...] = ()  # what this call changed in the requests to the endpoint, and why
    notes: tuple[dict, ...] = ()  # what the policy wants recorded about this answer (the expert form's choice)
    prompt: str | None = None  # what the model read, when not the prompter's text (the expert form's summary)


class Policy(Protocol):
    """Contract: ``name`` is recorded as the decision's controller; ``propose`` returns the answer
    text for the current state (it may read ``state["feedback"]`` on a repair round)."""

    name: str

    def propose(self, state: AgentState) -> ControllerAnswer: ...


def command_text(values: dict[str, float], alpha: float, rationale: str, **extra) -> str:
    """The answer text of a command: the knob ``values`` by name, ``alpha``, any ``extra`` fields, ``rationale``."""
    return json.dumps({**values, "alpha": alpha, **extra, "rationale": rationale})


def gap_threshold(spec: TaskSpec) -> float:
    """The generalization gap beyond which a widening gap counts as overfitting (see ``GAP_NOISE_BANDS``)."""
    return GAP_NOISE_BANDS * spec.noise_band


def lowered_learning_rate(spec: TaskSpec, values: dict[str, float]) -> float | None:
    """The learning rate halved, or None when the task has no ``learning_rate`` knob or halving would go
    below ``MIN_LR`` or the knob's lower bound."""
    if LEARNING_RATE not in values:
        return None
    lowered = values[LEARNING_RATE] * LR_DECAY
    return lowered if lowered >= max(spec.knob(LEARNING_RATE).low, MIN_LR) else None


def raised_regulariser(spec: TaskSpec, values: dict[str, float]) -> tuple[str, float] | None:
    """The first of ``REGULARISERS`` the task has that can still rise by its step (dropout up to
    ``MAX_HEURISTIC_DROPOUT``, any other up to its upper bound), with its new value; None if none can."""
    for name in REGULARISERS:
        if name not in values:
            continue
        knob = spec.knob(name)
        cap = min(knob.high, MAX_HEURISTIC_DROPOUT) if name == "dropout" else knob.high
        if values[name] + knob.step <= cap:
            return name, round(values[name] + knob.step, step_digits(knob))
    return None


def plateau_label(objective: str) -> str:
    """How a rationale names the objective's plateau: ``"validation"`` for a held-out ``val_*`` metric,
    else the objective's own name (``"eval_return_mean"``)."""
    return "validation" if objective.startswith("val_") else objective


class HeuristicPolicy:
    """Objective plateau -> lower the learning rate; widening generalization gap -> more regularisation;
    steady gains -> keep. A harmful verdict on the previous change -> hold still for an epoch.

    In order: after a harmful verdict, hold; when the objective has had no new best (by the task's
    mode) for ``PLATEAU_EPOCHS`` epochs, halve ``learning_rate`` (if the task has it, not below
    ``MIN_LR``); when the objective has a training counterpart (``val_X`` -> ``train_X``) and the gap
    between them (positive: train is better) exceeds :func:`gap_threshold` and widened since the previous
    epoch, raise ``dropout`` by its step up to 0.5, else ``weight_decay`` by its step; else keep.
    Alpha is never changed.
    """

    name = "heuristic"

    def propose(self, state: AgentState) -> ControllerAnswer:
        """The command after ``state["metrics"]``: the current knob values changed by :meth:`decide`, alpha kept."""
        m = state["metrics"]
        values = current_values(m)
        rationale = self.decide(m, training_trends(m), values)
        return ControllerAnswer(command_text(values, m.alpha, rationale))

    @staticmethod
    def decide(m: EpochMetrics, t: Trends, values: dict[str, float]) -> str:
        """Change ``values`` in place as the rules say; return the rationale."""
        spec = m.task
        if m.previous_reflection is not None and m.previous_reflection.verdict == "harmful":
            return "the previous change was judged harmful: hold the hyperparameters for one epoch"
        lowered = lowered_learning_rate(spec, values)
        if t.epochs_since_best >= PLATEAU_EPOCHS and lowered is not None:
            values[LEARNING_RATE] = lowered
            return (
                f"{plateau_label(spec.objective)} plateau: no new best for {t.epochs_since_best} epochs "
                f"(best {t.best:.{objective_decimals(spec)}f} at epoch {t.best_epoch}); lower the learning rate"
            )
        raised = raised_regulariser(spec, values)
        if t.gap is not None and t.gap > gap_threshold(spec) and t.gap > t.previous_gap and raised is not None:
            name, values[name] = raised
            d = objective_decimals(spec)
            return f"train/val gap widened from {t.previous_gap:.{d}f} to {t.gap:.{d}f}: more {name}"
        return "steady: keep the current hyperparameters"


class PlateauPolicy:
    """torch's ``ReduceLROnPlateau`` as a peer controller: the real scheduler, replayed over the run's
    objective history with the task's mode (``max`` for MNIST's val_acc; before task-agnostic messages it
    was replayed over val_loss with mode ``min``), so its semantics (threshold, patience, cooldown,
    min_lr) are torch's own. A task without a ``learning_rate`` knob is held unchanged.

    Defaults differ from torch's (factor 0.1, patience 10) because ReflectNet runs are tens of epochs:
    factor 0.5, patience 2. Other knobs and alpha are never changed.
    """

    name = "plateau"

    def __init__(self, factor: float = 0.5, patience: int = 2, threshold: float = 1e-4, min_lr: float = MIN_LR):
        self.factor, self.patience, self.threshold, self.min_lr = factor, patience, threshold, min_lr

    def propose(self, state: AgentState) -> ControllerAnswer:
        """The command after ``state["metrics"]``: the learning rate ReduceLROnPlateau reaches when stepped
        with each epoch's objective from the start (NaN where one is missing); other values and alpha kept."""
        import torch

        m = state["metrics"]
        spec, values = m.task, current_values(m)
        if LEARNING_RATE not in values:
            rationale = f"task {spec.name!r} has no learning_rate knob for ReduceLROnPlateau to lower: hold every value"
            return ControllerAnswer(command_text(values, m.alpha, rationale))
        first = m.history[0].hyperparameters if m.history else values
        initial_lr = first.get(LEARNING_RATE, values[LEARNING_RATE])
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=initial_lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=spec.mode,
            factor=self.factor,
            patience=self.patience,
            threshold=self.threshold,
            min_lr=max(self.min_lr, spec.knob(LEARNING_RATE).low),
        )
        for h in m.history:
            scheduler.step(h.metrics.get(spec.objective, math.nan))
        values[LEARNING_RATE] = lr = optimizer.param_groups[0]["lr"]
        reductions = 0 if lr == initial_lr else round(math.log(lr / initial_lr) / math.log(self.factor))
        rationale = (
            f"ReduceLROnPlateau(mode={spec.mode}, factor={self.factor}, patience={self.patience}): best "
            f"{spec.objective} {scheduler.best:.{objective_decimals(spec)}f}, {scheduler.num_bad_epochs} bad epoch(s), "
            f"{reductions} reduction(s) so far"
        )
        return ControllerAnswer(command_text(values, m.alpha, rationale))


def replay_answer(command: UpdateCommand) -> str:
    """``command`` as the answer text that the validator turns back into it: knobs, alpha, rationale, and
    weight modulation as one object by layer (a raw delta, or an operation with its ``value`` and ``seed``,
    so the replayed noise is the recorded one)."""
    modulation: dict = dict(command.weight_modulation or {})
    for op in command.weight_ops or []:
        modulation[op.layer] = {"op": op.op, "value": op.value, "seed": op.seed}
    extra = {"weight_modulation": modulation} if modulation else {}
    return command_text(command.hyperparameters, command.alpha, command.rationale, **extra)


class ReplayPolicy:
    """Answers each (run_id, epoch) with the command recorded for it, without a model call:
    ``commands[run_id][epoch]`` is the command decided after that epoch of the replaying run. An epoch
    with no recorded command holds the current values with alpha 0. The answer goes through the
    validator like any other (the recorded operations keep their seeds)."""

    name = "replay"

    def __init__(self, commands: dict[str, dict[int, UpdateCommand]] | None):
        self.commands = commands or {}

    def propose(self, state: AgentState) -> ControllerAnswer:
        """The recorded command for this run and epoch as answer text (:func:`replay_answer`), else a hold."""
        m = state["metrics"]
        command = self.commands.get(m.run_id, {}).get(m.epoch)
        if command is not None:
            return ControllerAnswer(replay_answer(command))
        rationale = f"replay: no command was recorded for epoch {m.epoch} of run {m.run_id!r}: hold, alpha 0"
        return ControllerAnswer(command_text(current_values(m), 0.0, rationale))
