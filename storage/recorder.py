"""The recorder: the one process that owns the DuckDB file.

Every other process PUSHes records to it; the orchestrator talks to it over a REP control socket
(``ping`` for the start-up handshake, ``sync`` to drain and commit, ``stop``). Inserts are batched
and committed at least every ``flush_interval_s``; anything committed survives a crash of any
process, and a stop (control message, SIGTERM or SIGINT) drains the socket, commits and
checkpoints first. Rows are keyed (run_id, epoch), so a record delivered twice is stored once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import zmq
from pydantic import BaseModel, ConfigDict

from bus.lifecycle import Stop, ignore_signals, read_config, stop_on_signals
from bus.log import configure_logging
from bus.messages import (
    BusDecodeError,
    ControlReply,
    ControlRequest,
    DecisionRecord,
    EpochRecord,
    LogEvent,
    Message,
    ReflectionRecord,
    RunFinished,
    RunStarted,
    decode,
    encode,
)
from storage.schema import migrate


class RecorderConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    db_path: Path
    endpoint: str  # PULL: records from every process
    control_endpoint: str  # REP: orchestrator control
    run_dir: Path
    flush_interval_s: float = 0.25
    batch_rows: int = 500


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc).replace(tzinfo=None)


INSERTS: dict[str, str] = {
    "runs": "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', NULL, ?, NULL, ?) ON CONFLICT DO NOTHING",
    "epochs": "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    "decisions": "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    "reflections": "INSERT INTO reflections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    "events": "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
    "finished": "UPDATE runs SET status = ?, status_reason = ?, finished_at = ? WHERE run_id = ?",
}
# Order matters within a flush: a run must exist before its status is updated.
FLUSH_ORDER = ["runs", "epochs", "decisions", "reflections", "events", "finished"]


def row_for(message: Message) -> tuple[str, tuple]:
    """The table and row a record message becomes."""
    if isinstance(message, RunStarted):
        m = message
        return "runs", (
            m.run_id,
            m.pair_id,
            m.arm,
            m.regime,
            m.n_train,
            m.controller,
            m.llm_model,
            m.seed,
            m.epochs,
            _utc(m.started_at),
            json.dumps(m.config),
        )
    if isinstance(message, EpochRecord):
        m = message
        return "epochs", (
            m.run_id,
            m.epoch,
            m.train_loss,
            m.train_acc,
            m.val_loss,
            m.val_acc,
            m.lr,
            m.dropout,
            m.alpha,
            m.wall_s,
            m.per_class_val_acc,
            json.dumps(m.grad_norms),
            json.dumps(m.weight_norms),
        )
    if isinstance(message, DecisionRecord):
        d = message.decision
        return "decisions", (
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
        )
    if isinstance(message, ReflectionRecord):
        r = message.reflection
        return "reflections", (
            message.run_id,
            r.epoch,
            r.about_epoch,
            r.prev_val_acc,
            r.val_acc,
            r.verdict,
            r.text,
            r.judge,
            r.rule_verdict,
        )
    if isinstance(message, LogEvent):
        m = message
        return "events", (_utc(m.ts), m.run_id, m.component, m.pid, m.level, m.event, json.dumps(m.data, default=repr))
    if isinstance(message, RunFinished):
        return "finished", (message.status, message.reason, _utc(message.finished_at), message.run_id)
    raise BusDecodeError(f"{message.TOPIC} is not a record the recorder stores")


class RecordBuffer:
    """Rows waiting for the next batched commit, per table."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con
        self._rows: dict[str, list[tuple]] = {table: [] for table in FLUSH_ORDER}
        self.pending = 0
        self.written = 0

    def add(self, message: Message) -> None:
        table, row = row_for(message)
        self._rows[table].append(row)
        self.pending += 1

    def flush(self) -> int:
        """Commit every pending row in one transaction; returns how many rows were flushed.

        If the batch fails, it is retried row by row so one bad row costs only itself; each
        rejected row becomes an event that says why.
        """
        if not self.pending:
            return 0
        batch = {table: rows for table, rows in self._rows.items() if rows}
        self._rows = {table: [] for table in FLUSH_ORDER}
        flushed, self.pending = self.pending, 0
        try:
            self._con.execute("BEGIN TRANSACTION")
            for table in FLUSH_ORDER:
                if table in batch:
                    self._con.executemany(INSERTS[table], batch[table])
            self._con.execute("COMMIT")
        except BaseException as exc:
            self._con.execute("ROLLBACK")
            if not isinstance(exc, duckdb.Error):  # interrupted (Stop): keep the rows for the final flush
                for table, rows in batch.items():
                    self._rows[table][:0] = rows
                self.pending += flushed
                raise
            for table in FLUSH_ORDER:
                for row in batch.get(table, []):
                    try:
                        self._con.execute(INSERTS[table], row)
                    except duckdb.Error as exc:
                        flushed -= 1
                        reason = json.dumps({"table": table, "error": str(exc)[:500]})
                        self._con.execute(
                            INSERTS["events"],
                            (_utc(time.time()), None, "recorder", os.getpid(), "error", "record_rejected", reason),
                        )
        self.written += flushed
        return flushed


def serve(cfg: RecorderConfig) -> int:
    try:
        con = duckdb.connect(str(cfg.db_path))
        migrate(con)
    except duckdb.Error as exc:
        print(f"recorder: cannot open database {cfg.db_path}: {exc}", file=sys.stderr, flush=True)
        return 2
    buffer = RecordBuffer(con)
    log = configure_logging("recorder", cfg.run_dir / "logs", forward=buffer.add)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVHWM, 100_000)
    control = ctx.socket(zmq.REP)
    control.setsockopt(zmq.LINGER, 1000)
    parent = os.getppid()

    stop_on_signals()

    def receive(frames: list[bytes]) -> None:
        try:
            buffer.add(decode(frames))
        except BusDecodeError as exc:
            log.warning("bad_frame", reason=exc.reason, frames=len(frames))

    def drain() -> None:
        # Take everything already queued; stop after a short quiet spell.
        while pull.poll(100, zmq.POLLIN):
            while True:
                try:
                    receive(pull.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break

    poller = zmq.Poller()
    try:
        pull.bind(cfg.endpoint)
        control.bind(cfg.control_endpoint)
        poller.register(pull, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        log.info("recorder_ready", db=str(cfg.db_path), endpoint=cfg.endpoint)
        last_flush = time.monotonic()
        stopping = False
        while not stopping:
            ready = dict(poller.poll(100))
            if pull in ready:
                for _ in range(1000):
                    try:
                        receive(pull.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
            if control in ready:
                try:
                    request = decode(control.recv_multipart())
                except BusDecodeError as exc:
                    log.warning("bad_control_frame", reason=exc.reason)
                    control.send_multipart(encode(ControlReply(op="?", ok=False, pid=os.getpid(), detail=exc.reason)))
                    continue
                if not isinstance(request, ControlRequest):
                    control.send_multipart(
                        encode(
                            ControlReply(op=request.TOPIC, ok=False, pid=os.getpid(), detail="not a control request")
                        )
                    )
                    continue
                if request.op in ("sync", "stop"):
                    drain()
                    buffer.flush()
                    last_flush = time.monotonic()
                stopping = request.op == "stop"
                control.send_multipart(
                    encode(ControlReply(op=request.op, ok=True, pid=os.getpid(), rows_written=buffer.written))
                )
            if buffer.pending >= cfg.batch_rows or (
                buffer.pending and time.monotonic() - last_flush >= cfg.flush_interval_s
            ):
                buffer.flush()
                last_flush = time.monotonic()
            if os.getppid() != parent:
                log.error("orchestrator_gone")
                stopping = True
        return 0
    except Stop as stop:
        log.warning("recorder_stopped", signal=str(stop))
        drain()
        return 0
    except zmq.ZMQError as exc:
        print(f"recorder: cannot bind {cfg.endpoint}: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        ignore_signals()
        log.info("recorder_closing", rows_written=buffer.written + buffer.pending)
        buffer.flush()
        con.execute("CHECKPOINT")
        con.close()
        pull.close()
        control.close()
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    return serve(read_config(RecorderConfig, "python -m storage", "ReflectNet recorder process", argv))
