"""Requests between the orchestrator's side and the services: the recorder's control socket, read-only
queries to the live recorder (``run.py sql`` / ``report``), ``run.py say`` to the running invocation, and
the instruction the orchestrator then pushes to a trainer."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from bus.agent_messages import Instruction
from bus.message_base import Message


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


class InstructionUpdate(Message):
    """Orchestrator -> a running trainer: ``run.py say`` gave this run a new instruction (``instruction`` None:
    withdrawn). It takes effect at the trainer's next decision."""

    TOPIC: ClassVar[str] = "instruction_update"

    run_id: str
    instruction: Instruction | None = None


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
