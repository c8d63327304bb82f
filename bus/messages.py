"""Every message that crosses a process boundary in ReflectNet.

All processes import these models; none redefines them. A message travels as a two-frame ZeroMQ
multipart ``[topic, json]`` where ``topic`` is the class's ``TOPIC`` and ``json`` is
``model_dump_json()``. Every body carries the schema version ``v``; a peer that receives another
version rejects the message with a reason instead of guessing (see :func:`decode`).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1

# Hard bounds of the command space. The validator clamps into these; the trainer refuses anything
# outside them, so a command that reaches the model is always inside.
DROPOUT_RANGE = (0.0, 0.9)
LEARNING_RATE_RANGE = (1e-6, 1e-1)
ALPHA_RANGE = (0.0, 1.0)

Verdict = Literal["beneficial", "harmful", "neutral"]
RunStatus = Literal["running", "completed", "failed", "interrupted"]


class BusDecodeError(ValueError):
    """A frame that is not a valid ReflectNet message; ``reason`` says why, for the events table."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# NaN/inf travel as JSON constants (a diverged loss is data, not a reason to lose the record).
_MODEL_CONFIG = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


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

    ``weight_modulation`` maps a parameter name to a delta of exactly that parameter's shape, as
    nested lists (the paper's raw form); ``weight_ops`` are compact operations (see ``WeightOp``).
    The trainer spreads each delta over the epoch's optimizer steps so that one epoch adds
    ``alpha * delta`` in total.
    """

    model_config = _MODEL_CONFIG

    dropout: float = Field(ge=DROPOUT_RANGE[0], le=DROPOUT_RANGE[1])
    learning_rate: float = Field(ge=LEARNING_RATE_RANGE[0], le=LEARNING_RATE_RANGE[1])
    alpha: float = Field(ge=ALPHA_RANGE[0], le=ALPHA_RANGE[1])
    weight_modulation: dict[str, list[Any]] | None = None
    weight_ops: list[WeightOp] | None = None
    rationale: str = ""

    def modulated_layers(self) -> list[str]:
        return [*(self.weight_modulation or {}), *(op.layer for op in self.weight_ops or [])]


class Reflection(BaseModel):
    """The agent's judgement of its previous decision from the change in validation accuracy."""

    model_config = _MODEL_CONFIG

    epoch: int = Field(ge=1)
    about_epoch: int = Field(ge=1)
    prev_val_acc: float
    val_acc: float
    verdict: Verdict
    text: str
    judge: str = "rule"  # "rule", or the name of the model that judged
    rule_verdict: Verdict | None = None  # the rule's verdict, kept beside a model's for comparison


class EpochSummary(BaseModel):
    """One past epoch as the agent sees it in the history."""

    model_config = _MODEL_CONFIG

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    dropout: float
    alpha: float


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

    It carries the history and the previously applied command with its reflection, so the agent
    keeps no state it cannot rebuild from one message (an agent restarted mid-run loses nothing).
    """

    TOPIC: ClassVar[str] = "epoch_metrics"

    run_id: str
    epoch: int = Field(ge=1)
    epochs_total: int = Field(ge=1)
    regime: str
    n_train: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    per_class_val_acc: list[float]
    grad_norms: dict[str, float]
    weight_norms: dict[str, float]
    param_shapes: dict[str, list[int]]
    lr: float
    dropout: float
    alpha: float
    wall_s: float
    history: list[EpochSummary]
    previous_command: UpdateCommand | None = None
    previous_reflection: Reflection | None = None


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
    regime: str
    n_train: int
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
    """One row of ``epochs``: what the trainer measured and which hyperparameters it used."""

    TOPIC: ClassVar[str] = "epoch_record"

    run_id: str
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    dropout: float
    alpha: float
    wall_s: float
    per_class_val_acc: list[float]
    grad_norms: dict[str, float]
    weight_norms: dict[str, float]


class DecisionRecord(Message):
    """One row of ``decisions``: exactly one per guided epoch, written by the trainer because only
    the trainer knows whether the agent's answer arrived in time or a fallback was applied."""

    TOPIC: ClassVar[str] = "decision_record"

    decision: Decision
    applied: bool


class ReflectionRecord(Message):
    TOPIC: ClassVar[str] = "reflection_record"

    run_id: str
    reflection: Reflection


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
