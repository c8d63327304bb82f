"""Records -> recorder: what every process sends to be stored (one table each, ``storage.record_rows``)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from bus.agent_messages import Decision, Instruction, Reflection
from bus.message_base import Message, RunStatus
from bus.task_spec import Mode


class RunStarted(Message):
    TOPIC: ClassVar[str] = "run_started"

    run_id: str
    pair_id: str
    arm: Literal["baseline", "guided", "aa"]  # aa: the baseline with another order seed (the noise floor)
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
    rollback_to: int | None = None  # the epoch whose checkpoint the trainer restored for this command, if any
    wait_ms: float | None = None  # the trainer's wait: request sent to answer received, or to its fallback
    # The epoch after which the command was applied (asynchronous decisions: a later one than the decision's epoch,
    # the one it was asked for); None for an applied command: the decision's own epoch (synchronous decisions).
    applied_epoch: int | None = None


class ReflectionRecord(Message):
    TOPIC: ClassVar[str] = "reflection_record"

    run_id: str
    reflection: Reflection


class InstructionRecord(Message):
    """One row of ``instructions``: sent when the instruction becomes active (``first_epoch`` None) and again
    with the epoch of the first decision it shaped; an instruction replaced before any decision read it (two
    ``say`` within one epoch) is sent once, with the instruction that replaced it (``superseded_by``)."""

    TOPIC: ClassVar[str] = "instruction_record"

    run_id: str
    instruction: Instruction
    first_epoch: int | None = None
    superseded_by: Instruction | None = None


class LogEvent(Message):
    TOPIC: ClassVar[str] = "log_event"

    ts: float
    run_id: str | None = None
    component: str
    pid: int
    level: str
    event: str
    data: dict[str, Any] = Field(default_factory=dict)
