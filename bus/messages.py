"""Every message that crosses a process boundary in ReflectNet.

All processes import these models; none redefines them. A message travels as a two-frame ZeroMQ
multipart ``[topic, json]`` where ``topic`` is the class's ``TOPIC`` and ``json`` is
``model_dump_json()``. Every body carries the schema version ``v``; a peer that receives another
version rejects the message with a reason instead of guessing (see :func:`decode`).
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError

# What a task declares travels in every EpochMetrics; importable from here like every other bus model.
from bus.task_spec import COMMAND_FIELDS, MODEL_CONFIG, Hyperparameter, Mode, TaskSpec  # noqa: F401

SCHEMA_VERSION = 2  # 2: task-agnostic metrics, objective and hyperparameters by name (issue 12)

# Hard bounds of the blend ratio: the one knob every task has (the trainer's, not the task's).
ALPHA_RANGE = (0.0, 1.0)

Verdict = Literal["beneficial", "harmful", "neutral"]
RunStatus = Literal["running", "completed", "failed", "interrupted"]


class BusDecodeError(ValueError):
    """A frame that is not a valid ReflectNet message; ``reason`` says why, for the events table."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_MODEL_CONFIG = MODEL_CONFIG  # frozen, strict, NaN/inf as JSON constants (bus.task_spec)


class Message(BaseModel):
    """Base of every bus message: frozen, strict about unknown fields, versioned."""

    model_config = _MODEL_CONFIG
    TOPIC: ClassVar[str] = ""

    v: int = SCHEMA_VERSION


# --------------------------------------------------------------------------- trainer <-> agent


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

    model_config = _MODEL_CONFIG

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
    bounds (the validator clamps; the trainer refuses anything else). ``weight_modulation`` maps a
    parameter name to a delta of exactly that parameter's shape, as nested lists (the paper's raw form);
    ``weight_ops`` are compact operations (see ``WeightOp``). The trainer spreads each delta over the
    epoch's optimizer steps so that one epoch adds ``alpha * delta`` in total.
    """

    model_config = _MODEL_CONFIG

    hyperparameters: dict[str, float]
    alpha: float = Field(ge=ALPHA_RANGE[0], le=ALPHA_RANGE[1])
    weight_modulation: dict[str, list[Any]] | None = None
    weight_ops: list[WeightOp] | None = None
    rationale: str = ""

    def modulated_layers(self) -> list[str]:
        return [*(self.weight_modulation or {}), *(op.layer for op in self.weight_ops or [])]


class Reflection(BaseModel):
    """The agent's judgement of its previous decision from the change in the task's objective after it."""

    model_config = _MODEL_CONFIG

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
    """One past epoch as the agent sees it in the history: its metrics and the knob values it used."""

    model_config = _MODEL_CONFIG

    epoch: int
    metrics: dict[str, float]
    hyperparameters: dict[str, float]
    alpha: float


class Instruction(BaseModel):
    """A user's plain-language instruction to the agent, active from when it is received until replaced or
    withdrawn. It shapes prompts only: every command still passes the validator's bounds."""

    model_config = _MODEL_CONFIG

    instruction_id: str
    text: str = Field(min_length=1, max_length=2000)
    source: Literal["flag", "file", "schedule", "say"]  # --instruction, --instruction @file, --instructions, run.py say
    received_at: float  # unix time, s


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

    @property
    def objective_value(self) -> float:
        """This epoch's value of the task's objective metric (NaN if the task did not report it)."""
        return self.metrics.get(self.task.objective, math.nan)


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
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reflection: Reflection | None = None
    # Against the instruction in force (agents.guidance.instruction_outcome): followed | ignored | contradicted |
    # respected (a later decision under a one-shot instruction, not against it); None without a readable one.
    instruction_outcome: Literal["followed", "ignored", "contradicted", "respected"] | None = None
    held: bool | None = None  # the command changes nothing (knobs, alpha, weights); None for a fallback
    choice: str | None = None  # the expert form's chosen candidate (agents.expert), e.g. "learning_rate:down"
    choice_margin: float | None = None  # its calibrated score minus the runner-up's; None without a choice


class ErrorReply(Message):
    """A REP peer's answer to a request it could not serve (REP must answer every request)."""

    TOPIC: ClassVar[str] = "error_reply"
    reason: str
    pid: int


# --------------------------------------------------------------------------- records -> recorder


class RunStarted(Message):
    TOPIC: ClassVar[str] = "run_started"

    run_id: str
    pair_id: str
    arm: Literal["baseline", "guided"]
    task: str
    objective: str
    mode: Mode
    regime: str
    budget: int  # training examples, or environment steps per epoch (the task's budget_unit)
    controller: str
    llm_model: str | None = None
    seed: int
    epochs: int
    started_at: float
    config: dict[str, Any]


class RunFinished(Message):
    TOPIC: ClassVar[str] = "run_finished"

    run_id: str
    status: RunStatus
    finished_at: float
    reason: str | None = None


class EpochRecord(Message):
    """One row of ``epochs``: what the trainer measured and which knob values it used."""

    TOPIC: ClassVar[str] = "epoch_record"

    run_id: str
    epoch: int
    objective: float  # the task's objective metric this epoch (also in ``metrics``)
    metrics: dict[str, float]
    vectors: dict[str, list[float]] = Field(default_factory=dict)
    hyperparameters: dict[str, float]
    alpha: float
    wall_s: float
    grad_norms: dict[str, float]
    weight_norms: dict[str, float]


class DecisionRecord(Message):
    """One row of ``decisions``: exactly one per guided epoch, written by the trainer because only
    the trainer knows whether the agent's answer arrived in time or a fallback was applied."""

    TOPIC: ClassVar[str] = "decision_record"

    decision: Decision
    applied: bool
    instruction_id: str | None = None  # the instruction the agent was given for this decision


class ReflectionRecord(Message):
    TOPIC: ClassVar[str] = "reflection_record"

    run_id: str
    reflection: Reflection


class InstructionRecord(Message):
    """One row of ``instructions``: sent when the instruction becomes active (``first_epoch`` None) and again
    with the epoch of the first decision it shaped."""

    TOPIC: ClassVar[str] = "instruction_record"

    run_id: str
    instruction: Instruction
    first_epoch: int | None = None


class InstructionUpdate(Message):
    """Orchestrator -> a running trainer: ``run.py say`` gave this run a new instruction (``instruction`` None:
    withdrawn). It takes effect at the trainer's next decision."""

    TOPIC: ClassVar[str] = "instruction_update"

    run_id: str
    instruction: Instruction | None = None


class LogEvent(Message):
    TOPIC: ClassVar[str] = "log_event"

    ts: float
    run_id: str | None = None
    component: str
    pid: int
    level: str
    event: str
    data: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- recorder control


class ControlRequest(Message):
    """Orchestrator -> recorder: ``ping`` (handshake), ``sync`` (drain and commit), ``stop``."""

    TOPIC: ClassVar[str] = "control"
    op: Literal["ping", "sync", "stop"]


class ControlReply(Message):
    TOPIC: ClassVar[str] = "control_reply"
    op: str
    ok: bool
    pid: int
    rows_written: int = 0
    detail: str | None = None
    busy_s: float | None = None  # a health ping: seconds the main loop has spent on its current request


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TOPIC: cls
    for cls in (
        Hello,
        Ready,
        EpochMetrics,
        Decision,
        ErrorReply,
        RunStarted,
        RunFinished,
        EpochRecord,
        DecisionRecord,
        ReflectionRecord,
        InstructionRecord,
        LogEvent,
        ControlRequest,
        ControlReply,
    )
}

# A frame larger than this is rejected before JSON parsing (a full raw delta of the largest layer
# is ~8 MB of JSON; nothing legitimate comes near this).
MAX_FRAME_BYTES = 32 * 1024 * 1024


def encode(message: Message) -> list[bytes]:
    """``[topic, json]`` frames for ``message``."""
    return [message.TOPIC.encode(), message.model_dump_json().encode()]


def decode(frames: list[bytes]) -> Message:
    """Parse ``[topic, json]`` frames into their message, or raise :class:`BusDecodeError`."""
    if len(frames) != 2:
        raise BusDecodeError(f"expected 2 frames [topic, json], got {len(frames)}")
    topic_raw, body = frames
    try:
        topic = topic_raw.decode("ascii")
    except UnicodeDecodeError:
        raise BusDecodeError(f"topic is not ascii: {topic_raw[:40]!r}") from None
    cls = MESSAGE_TYPES.get(topic)
    if cls is None:
        raise BusDecodeError(f"unknown topic {topic[:40]!r}")
    if len(body) > MAX_FRAME_BYTES:
        raise BusDecodeError(f"{topic} body of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BusDecodeError(f"{topic} body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BusDecodeError(f"{topic} body must be a JSON object, got {type(payload).__name__}")
    version = payload.get("v")
    if version != SCHEMA_VERSION:
        raise BusDecodeError(f"{topic} has schema version {version!r}, this build speaks {SCHEMA_VERSION}")
    try:
        return cls.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BusDecodeError(f"{topic} failed validation at {where!r}: {first['msg']}") from None


# --------------------------------------------------------------------------- read-only queries -> live recorder

QueryParam = str | int | float | bool | None


class QueryRequest(Message):
    """``run.py sql`` / ``run.py report`` -> the recorder holding the database, while a run is going.

    DuckDB lets no other process open a file that a writer holds, not even read-only, so the recorder
    answers: one SELECT statement (``?`` placeholders bound to ``params``), run on its own cursor in a
    transaction it rolls back, over the data of the last committed batch. Anything else is refused
    with a reason (see ``storage/live.py``).
    """

    TOPIC: ClassVar[str] = "query"
    sql: str = Field(max_length=1_000_000)
    params: list[QueryParam] = Field(default_factory=list)
    max_rows: int = Field(default=100_000, ge=1, le=1_000_000)


class QueryReply(Message):
    """The recorder's answer to a :class:`QueryRequest`: the columns (name and DuckDB type) and rows as
    JSON values (timestamps as ISO strings, decimals as strings; ``storage/live.py`` restores them), or
    ``ok = False`` and why. ``truncated``: more rows existed than ``max_rows`` or the reply size cap."""

    TOPIC: ClassVar[str] = "query_reply"
    ok: bool
    pid: int
    columns: list[str] = Field(default_factory=list)
    types: list[str] = Field(default_factory=list)
    rows: list[list[Any]] = Field(default_factory=list)
    truncated: bool = False
    error: str | None = None
    stopping: bool = False  # the recorder is shutting down: ask the file itself once it lets go
    elapsed_ms: float = 0.0


MESSAGE_TYPES.update({cls.TOPIC: cls for cls in (QueryRequest, QueryReply)})


# --------------------------------------------------------------------------- run.py say -> the running invocation


class SayRequest(Message):
    """``run.py say``: give ``run_id`` (None: the guided run training now) the instruction ``text``, or withdraw
    its instruction (``text`` None)."""

    TOPIC: ClassVar[str] = "say"
    run_id: str | None = None
    text: str | None = Field(default=None, min_length=1, max_length=2000)


class SayReply(Message):
    """The invocation's answer to a :class:`SayRequest`: delivered to ``run_id``, or refused and why."""

    TOPIC: ClassVar[str] = "say_reply"
    ok: bool
    run_id: str | None = None
    detail: str


MESSAGE_TYPES.update({cls.TOPIC: cls for cls in (InstructionUpdate, SayRequest, SayReply)})
