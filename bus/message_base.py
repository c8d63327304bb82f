"""The base of every bus message (:class:`Message`: frozen, strict, versioned), the decode error, and the
shared vocabulary of the message modules (``bus.messages`` is their public face)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel

from bus.task_spec import MODEL_CONFIG

# 2: task-agnostic metrics, objective and hyperparameters by name (issue 12); 3: a knob's family, aliases, label;
# 4: UpdateCommand.rollback and DecisionRecord.rollback_to (a peer of version 3 would refuse them as unknown fields;
# commands recorded in the database are read without the bus and replay as no rollback); 5: asynchronous decisions
# (EpochMetrics.decisions and command_epoch, DecisionRecord.applied_epoch)
SCHEMA_VERSION = 5

# Hard bounds of the blend ratio: the one knob every task has (the trainer's, not the task's).
ALPHA_RANGE = (0.0, 1.0)

Verdict = Literal["beneficial", "harmful", "neutral"]
RunStatus = Literal["running", "completed", "failed", "interrupted"]


class BusDecodeError(ValueError):
    """A frame that is not a valid ReflectNet message; ``reason`` says why, for the events table."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Message(BaseModel):
    """Base of every bus message: frozen, strict about unknown fields, versioned."""

    model_config = MODEL_CONFIG
    TOPIC: ClassVar[str] = ""

    v: int = SCHEMA_VERSION
