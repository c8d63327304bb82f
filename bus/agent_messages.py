"""Trainer <-> agent: what the trainer publishes after each epoch (:class:`EpochMetrics`), what the agent
answers (:class:`Decision` with its :class:`UpdateCommand`), the start-up handshake, and their parts."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from bus.message_base import ALPHA_RANGE, Message, Verdict
from bus.task_spec import MODEL_CONFIG, TaskSpec

# Compact weight operations: each moves a layer by at most this fraction of its weight norm.
MAX_OP_FRACTION = 0.05
WeightOpName = Literal["scale", "shrink", "noise"]


class WeightOp(BaseModel):
    """A compact weight modulation that always aligns with the layer it names.

    The trainer, which owns the weights, expands it into an exact-shape delta ``D`` (per epoch):

    * ``scale``  with ``value = factor``: ``D = (factor - 1) * W``  (factor in [0.95, 1.05])
    * ``shrink`` with ``value = amount``: ``D = -amount * W``       (amount in [0, 0.05])
    * ``noise``  with ``value = scale``:  ``D`` is Gaussian noise drawn with ``seed``, rescaled to
      norm ``scale * ||W||``                                       (scale in [0, 0.05])

    so ``||D|| <= 0.05 * ||W||`` by construction.
    """

    model_config = MODEL_CONFIG

    layer: str
    op: WeightOpName
    value: float
    seed: int = 0

    def delta_norm_fraction(self) -> float:
        """||D|| / ||W|| for this operation."""
        return abs(self.value - 1.0) if self.op == "scale" else abs(self.value)


class UpdateCommand(BaseModel):
    """A validated command as the trainer applies it at the next epoch boundary (paper 2.3).

    ``hyperparameters``: the task's knobs by name (``TaskSpec.hyperparameters``), each inside its hard
    bounds (the agent's checks refuse anything else, and so does the trainer). ``weight_modulation`` maps a
    parameter name to a delta of exactly that parameter's shape, as nested lists (the paper's raw form);
    ``weight_ops`` are compact operations (see ``WeightOp``). The trainer spreads each delta over the
    epoch's optimizer steps so that one epoch adds ``alpha * delta`` in total. ``rollback``: before anything else,
    return the model and optimizer to the best epoch so far (:func:`best_epoch`; the trainer's best checkpoint),
    then apply the knobs from there (the agent's checks clear it, with a recorded clamp, when there is no earlier
    best epoch to return to).
    """

    model_config = MODEL_CONFIG

    hyperparameters: dict[str, float]
    alpha: float = Field(ge=ALPHA_RANGE[0], le=ALPHA_RANGE[1])
    weight_modulation: dict[str, list[Any]] | None = None
    weight_ops: list[WeightOp] | None = None
    rationale: str = ""
    rollback: bool = False  # absent in commands recorded before it existed: they replay as no rollback

    def modulated_layers(self) -> list[str]:
        return [*(self.weight_modulation or {}), *(op.layer for op in self.weight_ops or [])]


class Reflection(BaseModel):
    """The agent's judgement of its previous decision from the change in the task's objective after it."""

    model_config = MODEL_CONFIG

    epoch: int = Field(ge=1)
    about_epoch: int = Field(ge=1)
    objective: str  # the metric judged, e.g. "val_acc"
    objective_before: float
    objective_after: float
    verdict: Verdict
    text: str
    judge: str = "rule"  # "rule", or the name of the model that judged
    rule_verdict: Verdict | None = None  # the rule's verdict, kept beside a model's for comparison
    # A model's verdict opposite to the rule's (beneficial vs harmful: beyond the noise band by definition) is
    # not fed back as truth: ``verdict`` is then the rule's, the model's is kept here, and the flag is set.
    model_verdict: Verdict | None = None
    contradicts_measurement: bool = False


class EpochSummary(BaseModel):
    """One past epoch as the agent sees it in the history: its metrics and the knob values it used, and the model
    calls and their cost (USD) of the decision made after it — 0 until it is made, and for a trainer's fallback,
    whose agent's answer never arrived — from which the agent knows what the run has spent (``agents.usage``)."""

    model_config = MODEL_CONFIG

    epoch: int
    metrics: dict[str, float]
    hyperparameters: dict[str, float]
    alpha: float
    llm_calls: int = Field(default=0, ge=0)
    llm_cost_usd: float = Field(default=0.0, ge=0.0)


def best_epoch(history: list[EpochSummary], spec: TaskSpec) -> EpochSummary | None:
    """The epoch of ``history`` with the best objective under ``spec.mode`` (the earliest on a tie); a NaN or
    infinite objective is never best. None when no epoch has a finite objective. The trainer keeps this epoch's
    checkpoint for a rollback and the agent reads it, from the same history, so the two cannot disagree."""
    best: EpochSummary | None = None
    for h in history:
        value = h.metrics.get(spec.objective, math.nan)
        if math.isfinite(value) and (best is None or spec.better(value, best.metrics[spec.objective])):
            best = h
    return best


class InstructionReading(BaseModel):
    """How an instruction was read when it was given (``agents.expert.reading.Reading``, as recorded): the line said
    back to the user (``read_as``, beginning "read as:" or "not understood:"), the intent in a few words
    (``Intent.words()``), its moves (``knob``, ``direction``, ``factor``, ``amount``, ``target``, ``op``, ``layer``;
    the fields a move does not set left out), the reader's ``confidence`` in [0, 1] and which ``reader`` it was."""

    model_config = MODEL_CONFIG

    read_as: str = Field(max_length=2000)
    intent: str = Field(max_length=2000)
    moves: list[dict[str, Any]] = Field(default_factory=list)
    confidence: float = Field(ge=0.0, le=1.0)
    reader: str = Field(max_length=200)


class Instruction(BaseModel):
    """A user's plain-language instruction to the agent, active from when it is received until replaced or
    withdrawn. A confident reading of it constrains every controller (``agents.nodes.guard``); ``reading`` is how
    the orchestrator read it when it was given, for the record (None: not read there)."""

    model_config = MODEL_CONFIG

    instruction_id: str
    text: str = Field(min_length=1, max_length=2000)
    source: Literal["flag", "file", "schedule", "say"]  # --instruction, --instruction @file, --instructions, run.py say
    received_at: float  # unix time, s
    reading: InstructionReading | None = None


class Hello(Message):
    """Start-up handshake: the trainer asks the agent whether it is there before epoch 1."""

    TOPIC: ClassVar[str] = "hello"
    run_id: str
    component: str


class Ready(Message):
    TOPIC: ClassVar[str] = "ready"
    run_id: str
    component: str
    pid: int


class EpochMetrics(Message):
    """Published by the trainer after each epoch; the agent's whole view of training.

    It carries the task's declarations, the history and the previously applied command with its
    reflection, so the agent keeps no state it cannot rebuild from one message (an agent restarted
    mid-run loses nothing). ``metrics`` holds the task's named scalars, the objective among them;
    ``vectors`` named lists (per-class accuracy, per-episode returns); ``hyperparameters`` the knob
    values this epoch used; ``budget`` what the regime gives (``task.budget_unit``).
    """

    TOPIC: ClassVar[str] = "epoch_metrics"

    run_id: str
    epoch: int = Field(ge=1)
    epochs_total: int = Field(ge=1)
    task: TaskSpec
    regime: str
    budget: int
    metrics: dict[str, float]
    vectors: dict[str, list[float]] = Field(default_factory=dict)
    hyperparameters: dict[str, float]
    alpha: float
    grad_norms: dict[str, float]
    weight_norms: dict[str, float]
    param_shapes: dict[str, list[int]]
    wall_s: float
    history: list[EpochSummary]
    previous_command: UpdateCommand | None = None
    previous_reflection: Reflection | None = None
    instruction: Instruction | None = None  # the user's instruction active for this decision
    instruction_first_decision: bool = True  # no decision has been made with this instruction yet
    # How the trainer waits for the decision (``--decisions``): ``sync`` trains the next epoch with it, ``async``
    # trains on while it is made and applies it at the first epoch boundary after it arrives.
    decisions: Literal["sync", "async"] = "sync"
    # The first epoch the command will (sync) or is expected to (async: the epoch after the next) train with.
    command_epoch: int | None = None

    @property
    def objective_value(self) -> float:
        """This epoch's value of the task's objective metric (NaN if the task did not report it)."""
        return self.metrics.get(self.task.objective, math.nan)

    @property
    def best(self) -> EpochSummary | None:
        """The best epoch so far (:func:`best_epoch` of the history, this epoch included), None before any."""
        return best_epoch(self.history, self.task)


class Decision(Message):
    """The agent's answer to one ``EpochMetrics``: the command plus how it was reached."""

    TOPIC: ClassVar[str] = "decision"

    run_id: str
    epoch: int
    controller: str
    command: UpdateCommand
    prompt: str = ""
    raw_output: str = ""
    valid: bool = True
    repair_attempts: int = 0
    fallback: bool = False
    fallback_reason: str | None = None
    clamped: dict[str, Any] = Field(default_factory=dict)
    notes: list[dict[str, Any]] = Field(default_factory=list)
    latency_ms: float = 0.0
    prompt_tokens: int | None = None  # over every model call of the decision (None: no call reported any)
    completion_tokens: int | None = None
    llm_calls: int | None = None  # model calls the decision made (agents.usage); None: unknown (a trainer's fallback)
    cost_usd: float | None = None  # their cost at the user's --llm-price, USD; None: unknown
    reflection: Reflection | None = None
    # Against the instruction in force (agents.expert.outcome.instruction_outcome): followed | ignored | contradicted |
    # respected (a later decision under a one-shot instruction, not against it); None without a readable one.
    # overridden: the policy proposed a move against a confident reading, which the guard put back (agents.nodes.guard).
    instruction_outcome: Literal["followed", "ignored", "contradicted", "respected", "overridden"] | None = None
    # What the policy proposed when the guard overrode it: {"hyperparameters", "alpha", "weight_ops",
    # "weight_modulation_layers"}; None when nothing was overridden.
    overridden_proposal: dict[str, Any] | None = None
    held: bool | None = None  # the command changes nothing (knobs, alpha, weights); None for a fallback
    choice: str | None = None  # the expert form's chosen candidate (agents.expert), e.g. "learning_rate:down"
    choice_margin: float | None = None  # its calibrated score minus the runner-up's; None without a choice


class ErrorReply(Message):
    """A REP peer's answer to a request it could not serve (REP must answer every request)."""

    TOPIC: ClassVar[str] = "error_reply"
    reason: str
    pid: int
