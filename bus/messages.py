"""Every message that crosses a process boundary in ReflectNet.

All processes import these models; none redefines them. A message travels as a two-frame ZeroMQ
multipart ``[topic, json]`` where ``topic`` is the class's ``TOPIC`` and ``json`` is
``model_dump_json()``. Every body carries the schema version ``v``; a peer that receives another
version rejects the message with a reason instead of guessing (see :func:`decode`).

The models live in one module per direction: ``bus.agent_messages`` (trainer <-> agent),
``bus.record_messages`` (records -> recorder), ``bus.control_messages`` (control, live queries, ``run.py
say``), on ``bus.message_base``; what a task declares is ``bus.task_spec``. This module is their public face
and the codec: :data:`MESSAGE_TYPES` (every topic, built here once), :func:`encode`, :func:`decode`.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from bus.agent_messages import (
    MAX_OP_FRACTION,
    Decision,
    EpochMetrics,
    EpochSummary,
    ErrorReply,
    Hello,
    Instruction,
    InstructionReading,
    Ready,
    Reflection,
    UpdateCommand,
    WeightOp,
    WeightOpName,
    best_epoch,
)
from bus.control_messages import (
    ControlReply,
    ControlRequest,
    InstructionUpdate,
    QueryParam,
    QueryReply,
    QueryRequest,
    SayReply,
    SayRequest,
)
from bus.message_base import ALPHA_RANGE, SCHEMA_VERSION, BusDecodeError, Message, RunStatus, Verdict
from bus.record_messages import (
    DecisionRecord,
    EpochRecord,
    InstructionRecord,
    LogEvent,
    ReflectionRecord,
    RunFinished,
    RunStarted,
)

# What a task declares travels in every EpochMetrics; importable from here like every other bus model.
from bus.task_spec import COMMAND_FIELDS, MODEL_CONFIG, Hyperparameter, Mode, TaskSpec  # noqa: F401

# Every message a peer may receive, by topic: the one table decode() reads.
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TOPIC: cls
    for cls in (
        Hello, Ready, EpochMetrics, Decision, ErrorReply,  # trainer <-> agent
        RunStarted, RunFinished, EpochRecord, DecisionRecord, ReflectionRecord, InstructionRecord, LogEvent,  # records
        ControlRequest, ControlReply, QueryRequest, QueryReply, InstructionUpdate, SayRequest, SayReply,  # control
    )
}  # fmt: skip

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


__all__ = [
    "ALPHA_RANGE", "COMMAND_FIELDS", "MAX_FRAME_BYTES", "MAX_OP_FRACTION", "MESSAGE_TYPES", "MODEL_CONFIG",
    "SCHEMA_VERSION", "BusDecodeError", "ControlReply", "ControlRequest", "Decision", "DecisionRecord",
    "EpochMetrics", "EpochRecord", "EpochSummary", "ErrorReply", "Hello", "Hyperparameter", "Instruction",
    "InstructionReading", "InstructionRecord", "InstructionUpdate", "LogEvent", "Message", "Mode", "QueryParam",
    "QueryReply",
    "QueryRequest", "Ready", "Reflection", "ReflectionRecord", "RunFinished", "RunStarted", "RunStatus",
    "SayReply", "SayRequest", "TaskSpec", "UpdateCommand", "Verdict", "WeightOp", "WeightOpName", "best_epoch", "decode",
    "encode",
]  # fmt: skip
