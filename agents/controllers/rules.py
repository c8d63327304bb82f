"""The decision rule set, and the two rule policies built on it.

One set of thresholds and tests reads the trends for every rule: the ``heuristic`` policy (the no-LLM peer
baseline and the fast test path) and the expert block's evidence reader (``agents.expert.evidence``) both call
:func:`on_plateau`, :func:`gap_widening` and :func:`evidence_bounds`, so they cannot drift apart. Knobs are found
by what they are (``Hyperparameter.family``), never by name: a user's task with a ``family="learning_rate"`` knob
is steered by the same rules as MNIST. ``plateau`` is torch's ``ReduceLROnPlateau``.
"""

from __future__ import annotations

import math

from agents.proposals.proposal import Proposal
from agents.state import AgentState
from agents.trends import (
    Trends,
    current_values,
    epoch_noise,
    objective_decimals,
    step_digits,
    train_counterpart,
    training_trends,
)
from bus.messages import EpochMetrics, Hyperparameter, TaskSpec

PLATEAU_EPOCHS = 2  # epochs without a new best objective before the learning rate is lowered
LR_DECAY = 0.5
MIN_LR = 1e-5  # the rules never lower a learning rate below this (nor below the knob's low)
# The generalization gap counts as overfitting, when it widens, beyond this many noise bands of the
# objective: a gap 15 times the smallest change the task calls real (0.03 for MNIST's band of 0.002,
# the rule's original threshold; 7.5 RMSE for the diabetes task's band of 0.5).
GAP_NOISE_BANDS = 15
DIVERGING_BANDS = 10  # the objective worsened by this many noise bands in one epoch: the run is diverging
# A one-epoch fall counts as diverging, and a fall from the best as a collapse (one more), only beyond this many of
# the run's own epoch noise (agents.trends.epoch_noise) as well as beyond the task's bands: with 100 MNIST images a
# chance dip of 6 points at epoch 5 read as a collapse and rolled the run back (issue 19).
NOISE_SIGMAS = 4
# The rules never raise a regularization knob above this (nor above its high): dropout beyond 0.5 starves the
# paper's small CNN. Knobs of a smaller range (weight decay, at most 0.1) stop at their own bound.
MAX_RULE_REGULARIZATION = 0.5


def learning_rate_knob(spec: TaskSpec) -> Hyperparameter | None:
    """The task's first knob of family ``learning_rate``, or None."""
    return next((k for k in spec.hyperparameters if k.family == "learning_rate"), None)


def regularization_knobs(spec: TaskSpec) -> list[Hyperparameter]:
    """The task's knobs of family ``regularization``, in the task's order (its order of preference)."""
    return [k for k in spec.hyperparameters if k.family == "regularization"]


def evidence_bounds(knob: Hyperparameter) -> tuple[float, float]:
    """How far the evidence alone may move a knob: a learning rate not below :data:`MIN_LR`, a regularization
    knob not above :data:`MAX_RULE_REGULARIZATION`; any knob within its hard bounds. A user's instruction may go
    to the hard bounds."""
    low, high = knob.low, knob.high
    if knob.family == "learning_rate":
        low = max(low, MIN_LR)
    if knob.family == "regularization":
        high = min(high, MAX_RULE_REGULARIZATION)
    return low, high


def gap_threshold(spec: TaskSpec) -> float:
    """The generalization gap beyond which a widening gap counts as overfitting (see ``GAP_NOISE_BANDS``)."""
    return GAP_NOISE_BANDS * spec.noise_band


def gap_widening(spec: TaskSpec, t: Trends) -> bool:
    """Overfitting: the generalization gap is beyond :func:`gap_threshold`, wider than one epoch earlier, and the
    objective made no new best this epoch. A gap that widens while the objective still improves is a model
    learning its training set faster than the rest, not overfitting; treating it as overfitting raised dropout
    every epoch from the start with 100 MNIST images and starved the network (issue 19: -1.5 points on 5 of 5
    seeds)."""
    return (t.gap is not None and t.previous_gap is not None and t.gap > gap_threshold(spec)
            and t.gap > t.previous_gap and t.epochs_since_best >= 1)  # fmt: skip


def on_plateau(t: Trends) -> bool:
    """Whether the objective has had no new best for :data:`PLATEAU_EPOCHS` epochs, counted from the last change
    of the knobs too (as ReduceLROnPlateau resets its bad epochs after a reduction): a change is given
    :data:`PLATEAU_EPOCHS` epochs to act before the next one, so a plateau does not halve the learning rate every
    epoch down to :data:`MIN_LR`."""
    return t.epochs_since_best >= PLATEAU_EPOCHS and t.epochs_since_change >= PLATEAU_EPOCHS


def lowered_learning_rate(spec: TaskSpec, values: dict[str, float]) -> tuple[str, float] | None:
    """The learning rate halved, with its knob's name; None when the task has no learning-rate knob or halving
    would go below its :func:`evidence_bounds`."""
    knob = learning_rate_knob(spec)
    if knob is None:
        return None
    lowered = values[knob.name] * LR_DECAY
    return (knob.name, lowered) if lowered >= evidence_bounds(knob)[0] else None


def raised_regulariser(spec: TaskSpec, values: dict[str, float]) -> tuple[str, float] | None:
    """The first regularization knob that can still rise by its step within its :func:`evidence_bounds`, with its
    new value; None if none can."""
    for knob in regularization_knobs(spec):
        if values[knob.name] + knob.step <= evidence_bounds(knob)[1]:
            return knob.name, round(values[knob.name] + knob.step, step_digits(knob))
    return None


def plateau_label(objective: str) -> str:
    """How a rationale names the objective's plateau: ``"validation"`` for a held-out ``val_*`` metric,
    else the objective's own name (``"eval_return_mean"``)."""
    return "validation" if objective.startswith("val_") else objective


class HeuristicPolicy:
    """Objective plateau -> lower the learning rate; widening generalization gap -> more regularisation;
    steady gains -> keep. A harmful verdict on the previous change -> hold still for an epoch.

    In order: after a harmful verdict, hold; on a plateau (:func:`on_plateau`, by the task's mode), halve the
    learning rate (if the task has one, not below ``MIN_LR``); when the objective has a training counterpart
    (``val_X`` -> ``train_X``) and the gap between them is widening (:func:`gap_widening`), raise the first
    regularization knob that can still rise by its step (MNIST: dropout, up to 0.5); else keep. Alpha is never
    changed.
    """

    name = "heuristic"

    def propose(self, state: AgentState) -> Proposal:
        """The command after ``state["metrics"]``: after a collapse, :func:`collapse_rollback`; else the current knob
        values changed by :meth:`decide`, alpha kept."""
        m = state["metrics"]
        values = current_values(m)
        if (rescue := collapse_rollback(m, values)) is not None:
            return rescue
        rationale = self.decide(m, training_trends(m), values)
        return Proposal(values, m.alpha, rationale=rationale)

    @staticmethod
    def decide(m: EpochMetrics, t: Trends, values: dict[str, float]) -> str:
        """Change ``values`` in place as the rules say; return the rationale."""
        spec = m.task
        if m.previous_reflection is not None and m.previous_reflection.verdict == "harmful":
            return "the previous change was judged harmful: hold the hyperparameters for one epoch"
        lowered = lowered_learning_rate(spec, values)
        if on_plateau(t) and lowered is not None:
            name, values[name] = lowered
            return (
                f"{plateau_label(spec.objective)} plateau: no new best for {t.epochs_since_best} epochs "
                f"(best {t.best:.{objective_decimals(spec)}f} at epoch {t.best_epoch}); lower the learning rate"
            )
        raised = raised_regulariser(spec, values)
        if gap_widening(spec, t) and raised is not None:
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

    def propose(self, state: AgentState) -> Proposal:
        """The command after ``state["metrics"]``: the learning rate ReduceLROnPlateau reaches when stepped
        with each epoch's objective from the start (NaN where one is missing); other values and alpha kept."""
        import torch

        m = state["metrics"]
        spec, values = m.task, current_values(m)
        knob = learning_rate_knob(spec)
        if knob is None:
            rationale = f"task {spec.name!r} has no learning_rate knob for ReduceLROnPlateau to lower: hold every value"
            return Proposal(values, m.alpha, rationale=rationale)
        first = m.history[0].hyperparameters if m.history else values
        initial_lr = first.get(knob.name, values[knob.name])
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=initial_lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=spec.mode,
            factor=self.factor,
            patience=self.patience,
            threshold=self.threshold,
            min_lr=max(self.min_lr, knob.low),
        )
        for h in m.history:
            scheduler.step(h.metrics.get(spec.objective, math.nan))
        values[knob.name] = lr = optimizer.param_groups[0]["lr"]
        reductions = 0 if lr == initial_lr else round(math.log(lr / initial_lr) / math.log(self.factor))
        rationale = (
            f"ReduceLROnPlateau(mode={spec.mode}, factor={self.factor}, patience={self.patience}): best "
            f"{spec.objective} {scheduler.best:.{objective_decimals(spec)}f}, {scheduler.num_bad_epochs} bad epoch(s), "
            f"{reductions} reduction(s) so far"
        )
        return Proposal(values, m.alpha, rationale=rationale)


# A collapse (:func:`collapse`): the objective worse than the best so far by more than this many noise bands — 5
# points of MNIST accuracy (band 0.002), 12.5 RMSE for the diabetes task (band 0.5) — a fall no plateau or noise
# makes (a plateau stays near its best; an epoch's noise is a band or two).
COLLAPSE_BANDS = 25
TRAINING_LOSS = "train_loss"


def collapse(m: EpochMetrics) -> str | None:
    """Why the run has collapsed after epoch ``m``, or None. Collapsed: there is an earlier best epoch
    (``EpochMetrics.best``) to return to, and either the objective is worse than that best by more than
    :data:`COLLAPSE_BANDS` noise bands and no better than the epoch before (still falling, not recovering), or a
    training metric (``train_loss``, the objective's training counterpart) is NaN or infinite: the weights diverged."""
    spec, best = m.task, m.best
    if best is None or best.epoch == m.epoch:
        return None
    d, best_value = objective_decimals(spec), best.metrics[spec.objective]
    where = f"its best {best_value:.{d}f} at epoch {best.epoch}"
    training = [TRAINING_LOSS, train_counterpart(spec.objective, m.metrics)]
    broken = [name for name in training if name in m.metrics and not math.isfinite(m.metrics[name])]
    if broken:
        return f"{', '.join(broken)} {m.metrics[broken[0]]}: training diverged after {where}"
    value = m.objective_value
    before = m.history[-2].metrics.get(spec.objective, math.nan) if len(m.history) >= 2 else math.nan
    values = [h.metrics.get(spec.objective, math.nan) for h in m.history or []]
    threshold = max(COLLAPSE_BANDS * spec.noise_band, (NOISE_SIGMAS + 1) * epoch_noise(values[:-1]))
    fallen = spec.improvement(value, best_value) > threshold
    if fallen and not spec.better(value, before):
        return (
            f"{spec.objective} collapsed to {value:.{d}f} from {where}, more than {threshold:.{d}f} (the larger of "
            f"{COLLAPSE_BANDS} noise bands and {NOISE_SIGMAS + 1} times its epoch noise)"
        )
    return None


def collapse_rollback(m: EpochMetrics, values: dict[str, float]) -> Proposal | None:
    """After a :func:`collapse`: return to the best epoch with the learning rate lowered
    (:func:`lowered_learning_rate`, from the value this epoch used) and alpha kept; None when the run has not
    collapsed."""
    reason = collapse(m)
    if reason is None:
        return None
    lowered = lowered_learning_rate(m.task, values)
    if lowered is not None:
        name, values[name] = lowered
    lower = "; lower the learning rate" if lowered is not None else ""
    return Proposal(values, m.alpha, rationale=f"{reason}: go back to epoch {m.best.epoch}{lower}", rollback=True)
