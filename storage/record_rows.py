"""What each record becomes in the database: the INSERT of every table, in the order a flush runs them, and
the row builder of every record type (columns in the INSERT's order; the MNIST columns of schema 1 filled
where a task reports them)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from bus.messages import (
    BusDecodeError,
    DecisionRecord,
    EpochRecord,
    InstructionRecord,
    LogEvent,
    Message,
    ReflectionRecord,
    RunFinished,
    RunStarted,
)


def utc_datetime(ts: float) -> datetime:
    """Unix time ``ts`` (s) as a naive UTC datetime, the form of the TIMESTAMP columns."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).replace(tzinfo=None)


def _columns(table: str, names: str, values: str | None = None) -> str:
    """``INSERT INTO table (names) VALUES (?, ...)``: columns by name, as migrations append them."""
    count = len(names.split(","))
    return f"INSERT INTO {table} ({names}) VALUES ({values or ', '.join('?' * count)}) ON CONFLICT DO NOTHING"


INSERTS: dict[str, str] = {
    "runs": _columns(
        "runs",
        "run_id, pair_id, arm, regime, n_train, controller, llm_model, seed, epochs, status, status_reason, "
        "started_at, finished_at, config, task, objective, mode",
        "?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', NULL, ?, NULL, ?, ?, ?, ?",
    ),
    "epochs": _columns(
        "epochs",
        "run_id, epoch, train_loss, train_acc, val_loss, val_acc, lr, dropout, alpha, wall_s, per_class_val_acc, "
        "grad_norms, weight_norms, objective, metrics, hyperparameters, vectors",
    ),
    "decisions": _columns(
        "decisions",
        "run_id, epoch, controller, prompt, raw_output, command, valid, repair_attempts, fallback, fallback_reason, "
        "clamped, notes, applied, latency_ms, prompt_tokens, completion_tokens, instruction_id, instruction_outcome, held, "
        "choice, choice_margin, overridden_proposal, rollback_to, llm_calls, wait_ms, cost_usd, applied_epoch",
    ),
    # Sent twice: when the instruction becomes active, then with the first epoch it shaped.
    "instructions": "INSERT INTO instructions (instruction_id, run_id, text, source, received_at, first_epoch, "
    "superseded_by, superseded_at, read_as, intent, moves, confidence, reader) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (instruction_id) DO UPDATE SET "
    "first_epoch = coalesce(instructions.first_epoch, excluded.first_epoch), "
    "superseded_by = coalesce(instructions.superseded_by, excluded.superseded_by), "
    "superseded_at = coalesce(instructions.superseded_at, excluded.superseded_at)",
    "reflections": _columns(
        "reflections",
        "run_id, epoch, about_epoch, prev_val_acc, val_acc, verdict, text, judge, rule_verdict, objective, "
        "objective_before, objective_after, model_verdict, contradicts_measurement",
    ),
    "events": "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
    "finished": "UPDATE runs SET status = ?, status_reason = ?, finished_at = ? WHERE run_id = ?",
}
# Order matters within a flush: a run must exist before its status is updated.
FLUSH_ORDER = ["runs", "epochs", "instructions", "decisions", "reflections", "events", "finished"]

# The MNIST columns of the epochs table (schema 1) and the metric, vector or knob each is filled from
# when a task reports it (else NULL).
LEGACY_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")
LEGACY_KNOBS = {"lr": "learning_rate", "dropout": "dropout"}
LEGACY_VECTOR = "per_class_val_acc"
LEGACY_OBJECTIVE = "val_acc"  # reflections.prev_val_acc / val_acc hold a reflection on this objective only


def _run_row(m: RunStarted) -> tuple:
    """A ``runs`` row: the run as it starts (status 'running' and NULL finish come from the SQL)."""
    return (
        m.run_id,
        m.pair_id,
        m.arm,
        m.regime,
        m.budget,  # n_train: training examples, or environment steps per epoch
        m.controller,
        m.llm_model,
        m.seed,
        m.epochs,
        utc_datetime(m.started_at),
        json.dumps(m.config),
        m.task,
        m.objective,
        m.mode,
    )


def _epoch_row(m: EpochRecord) -> tuple:
    """An ``epochs`` row: the MNIST columns (NULL where the task does not report them), then JSON columns."""
    return (
        m.run_id,
        m.epoch,
        *(m.metrics.get(name) for name in LEGACY_METRICS),
        m.hyperparameters.get(LEGACY_KNOBS["lr"]),
        m.hyperparameters.get(LEGACY_KNOBS["dropout"]),
        m.alpha,
        m.wall_s,
        m.vectors.get(LEGACY_VECTOR),
        json.dumps(m.grad_norms),
        json.dumps(m.weight_norms),
        m.objective,
        json.dumps(m.metrics),
        json.dumps(m.hyperparameters),
        json.dumps(m.vectors),
    )


def _decision_row(message: DecisionRecord) -> tuple:
    """A ``decisions`` row: the decision, its command as JSON, whether the trainer applied it, after which epoch
    (a synchronous decision: the epoch it was asked for) and the epoch a rollback restored."""
    d = message.decision
    return (
        d.run_id,
        d.epoch,
        d.controller,
        d.prompt,
        d.raw_output,
        d.command.model_dump_json(),
        d.valid,
        d.repair_attempts,
        d.fallback,
        d.fallback_reason,
        json.dumps(d.clamped),
        json.dumps(d.notes),
        message.applied,
        d.latency_ms,
        d.prompt_tokens,
        d.completion_tokens,
        message.instruction_id,
        d.instruction_outcome,
        d.held,
        d.choice,
        d.choice_margin,
        json.dumps(d.overridden_proposal) if d.overridden_proposal is not None else None,
        message.rollback_to,
        d.llm_calls,
        message.wait_ms,
        d.cost_usd,
        message.applied_epoch if message.applied_epoch is not None or not message.applied else d.epoch,
    )


def _instruction_row(message: InstructionRecord) -> tuple:
    """An ``instructions`` row (upserted: a later record sets ``first_epoch``)."""
    i, by = message.instruction, message.superseded_by
    superseded = (by.instruction_id, utc_datetime(by.received_at)) if by is not None else (None, None)
    r = i.reading
    reading = (r.read_as, r.intent, json.dumps(r.moves), r.confidence, r.reader) if r is not None else (None,) * 5
    return (i.instruction_id, message.run_id, i.text, i.source, utc_datetime(i.received_at), message.first_epoch,
            *superseded, *reading)  # fmt: skip


def _reflection_row(message: ReflectionRecord) -> tuple:
    """A ``reflections`` row; ``prev_val_acc`` / ``val_acc`` only for a reflection on :data:`LEGACY_OBJECTIVE`."""
    r = message.reflection
    legacy = r.objective == LEGACY_OBJECTIVE
    return (
        message.run_id,
        r.epoch,
        r.about_epoch,
        r.objective_before if legacy else None,
        r.objective_after if legacy else None,
        r.verdict,
        r.text,
        r.judge,
        r.rule_verdict,
        r.objective,
        r.objective_before,
        r.objective_after,
        r.model_verdict,
        r.contradicts_measurement,
    )


def _event_row(m: LogEvent) -> tuple:
    """An ``events`` row (its ``data`` as JSON, anything unserialisable by its repr)."""
    return (utc_datetime(m.ts), m.run_id, m.component, m.pid, m.level, m.event, json.dumps(m.data, default=repr))


def _finished_row(message: RunFinished) -> tuple:
    """The parameters of the ``finished`` UPDATE: status, reason, finish time, run id."""
    return (message.status, message.reason, utc_datetime(message.finished_at), message.run_id)


# Record type -> (table in INSERTS, row builder); checked in this order with isinstance.
ROW_BUILDERS: dict[type[Message], tuple[str, Callable[[Any], tuple]]] = {
    RunStarted: ("runs", _run_row),
    EpochRecord: ("epochs", _epoch_row),
    DecisionRecord: ("decisions", _decision_row),
    InstructionRecord: ("instructions", _instruction_row),
    ReflectionRecord: ("reflections", _reflection_row),
    LogEvent: ("events", _event_row),
    RunFinished: ("finished", _finished_row),
}


def row_for(message: Message) -> tuple[str, tuple]:
    """The table and row a record message becomes (columns in the order of :data:`INSERTS`); raises
    :class:`bus.messages.BusDecodeError` for a message that is not a record."""
    for record_type, (table, build) in ROW_BUILDERS.items():
        if isinstance(message, record_type):
            return table, build(message)
    raise BusDecodeError(f"{message.TOPIC} is not a record the recorder stores")
