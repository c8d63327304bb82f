"""The recorder: the one process that owns the DuckDB file.

Every other process sends records to its ROUTER socket through a :class:`bus.transport.RecordSender`
(``[seq, topic, json]`` under the sender's identity); the orchestrator talks to it over a REP control
socket (``ping`` for the start-up handshake, ``sync`` to drain and commit, ``stop``). Inserts are
batched and committed at least every ``flush_interval_s``, together with each sender's watermark
(table ``delivery``); only then is the sender acknowledged. So a recorder killed at any moment loses
nothing: what it had not committed is still in the senders' outboxes and comes again to the
restarted recorder, which drops what it had already committed. A message out of order (a gap after a
reconnect) is dropped and comes again in order. Rows are also keyed (run_id, epoch), so a record sent
by two processes (a trainer and, after its crash, the orchestrator replaying its checkpoint) is
stored once. Records of a run the database does not know are rejected with a reason.
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
from pydantic import BaseModel, ConfigDict, model_validator

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
from bus.transport import check_endpoint
from storage.database import (
    EXIT_DATABASE_UNUSABLE,
    DatabaseLocked,
    DatabaseUnusable,
    first_line,
    open_database,
)
from storage.live import QueryService, RecorderEndpoint, publish_endpoint, query_endpoint_for, withdraw_endpoint
from storage.schema import migrate

# How long the recorder waits for a reader (run.py sql / report) to let go of the file at start.
LOCK_WAIT_S = 10.0


class RecorderConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    db_path: Path
    endpoint: str  # ROUTER: records from every process
    control_endpoint: str  # REP: orchestrator control
    run_dir: Path
    flush_interval_s: float = 0.25
    batch_rows: int = 500
    allow_remote: bool = False  # bind a non-loopback address (only when the user passed one explicitly)

    @model_validator(mode="after")
    def _loopback_unless_allowed(self):
        check_endpoint(self.endpoint, self.allow_remote)
        check_endpoint(self.control_endpoint, self.allow_remote)
        return self


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


class RecordRejected(ValueError):
    """A well-formed record the database must not take (e.g. for a run it does not know)."""


RUN_RECORDS = (EpochRecord, DecisionRecord, ReflectionRecord, RunFinished, LogEvent)


def _run_of(message: Message) -> str | None:
    if isinstance(message, DecisionRecord):
        return message.decision.run_id
    return getattr(message, "run_id", None)


class RecordBuffer:
    """Rows waiting for the next batched commit, per table, and the senders' delivery watermarks."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con
        self._rows: dict[str, list[tuple]] = {table: [] for table in FLUSH_ORDER}
        self.pending = 0
        self.written = 0
        self.known_runs: set[str] = {run_id for (run_id,) in con.execute("SELECT run_id FROM runs").fetchall()}
        # sender -> highest seq committed (from the database) and accepted (committed or in this buffer)
        self.committed: dict[str, int] = dict(con.execute("SELECT sender, seq FROM delivery").fetchall())
        self.accepted: dict[str, int] = dict(self.committed)
        self._marks: dict[str, int] = {}

    def add(self, message: Message) -> None:
        """Queue ``message``'s row; raises :class:`RecordRejected` for a run this database does not know."""
        run_id = _run_of(message)
        if isinstance(message, RUN_RECORDS) and run_id is not None and run_id not in self.known_runs:
            raise RecordRejected(f"{message.TOPIC} for unknown run {run_id[:80]!r}")
        table, row = row_for(message)
        if isinstance(message, RunStarted):
            self.known_runs.add(message.run_id)
        self._rows[table].append(row)
        self.pending += 1

    @property
    def unsaved(self) -> bool:
        """Rows or watermarks not committed yet."""
        return bool(self.pending or self._marks)

    def accept(self, sender: str, seq: int) -> str:
        """Where message ``seq`` of ``sender`` stands: 'new' (take it), 'duplicate' or 'gap' (drop it)."""
        last = self.accepted.get(sender, 0)
        if seq <= last:
            return "duplicate"
        if seq > last + 1:
            return "gap"
        self.accepted[sender] = seq
        self._marks[sender] = seq
        return "new"

    def flush(self) -> dict[str, int]:
        """Commit every pending row and watermark in one transaction; returns the senders to acknowledge.

        If the batch fails, it is retried row by row so one bad row costs only itself; each
        rejected row becomes an event that says why.
        """
        marks, self._marks = self._marks, {}
        if not self.pending and not marks:
            return {}
        batch = {table: rows for table, rows in self._rows.items() if rows}
        self._rows = {table: [] for table in FLUSH_ORDER}
        flushed, self.pending = self.pending, 0
        now = _utc(time.time())
        try:
            self._con.execute("BEGIN TRANSACTION")
            for table in FLUSH_ORDER:
                if table in batch:
                    self._con.executemany(INSERTS[table], batch[table])
            if marks:
                self._con.executemany(UPSERT_DELIVERY, [(sender, seq, now) for sender, seq in marks.items()])
            self._con.execute("COMMIT")
        except BaseException as exc:
            self._con.execute("ROLLBACK")
            if not isinstance(exc, duckdb.Error):  # interrupted (Stop): keep the rows for the final flush
                for table, rows in batch.items():
                    self._rows[table][:0] = rows
                self.pending += flushed
                self._marks = {**marks, **self._marks}
                raise
            try:
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
                if marks:
                    self._con.executemany(UPSERT_DELIVERY, [(sender, seq, now) for sender, seq in marks.items()])
            except BaseException:
                # Interrupted half-way: forget what these senders sent since their last commit, so it is
                # taken again when they resend (a later mark must not acknowledge rows that were dropped).
                for sender in marks:
                    self.accepted[sender] = self.committed.get(sender, 0)
                self._marks = {s: m for s, m in self._marks.items() if s not in marks}
                raise
        self.written += flushed
        self.committed.update(marks)
        return marks


UPSERT_DELIVERY = (
    "INSERT INTO delivery VALUES (?, ?, ?) ON CONFLICT (sender) DO UPDATE SET seq = excluded.seq, "
    "updated_at = excluded.updated_at"
)


def open_recorder_database(db: Path, lock_wait_s: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """Open ``db`` for writing and migrate it; raises :class:`storage.database.DatabaseError` (one line).

    A lock held by a reader (``run.py sql`` or ``report`` in the moment before the recorder starts) is
    waited out for ``lock_wait_s``. After the migrations the database is checkpointed, so the views they
    recreate are in the file and not in the WAL next to the first batch of upserts: the WAL a crash
    leaves holds only rows (DuckDB releases have had replay bugs with DDL beside upserts).
    """
    deadline = time.monotonic() + lock_wait_s
    while True:
        try:
            con = open_database(db)
            break
        except DatabaseLocked:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    try:
        migrate(con)  # ends with a CHECKPOINT
        # SQL that reads other files has no business here, and the live query socket must not lend
        # the recorder's rights to a query (see storage/live.py).
        con.execute("SET enable_external_access = false")
    except duckdb.Error as exc:
        con.close()
        raise DatabaseUnusable(f"cannot migrate {db}: {first_line(exc)}") from None
    return con


def serve(cfg: RecorderConfig) -> int:
    """Run the recorder until ``stop``, a signal, or the orchestrator's exit; the process's exit code.

    0 after a clean stop; 2 when it cannot bind its sockets or the file stays locked by another
    process; :data:`EXIT_DATABASE_UNUSABLE` (65) when the database cannot be opened for a reason that
    a restart does not fix (an unreplayable WAL, not a DuckDB file): one line on stderr names the file.
    """
    try:
        con = open_recorder_database(cfg.db_path)
    except DatabaseLocked as exc:
        print(f"recorder: {exc}", file=sys.stderr, flush=True)
        return 2
    except DatabaseUnusable as exc:
        print(f"recorder: {exc}", file=sys.stderr, flush=True)
        return EXIT_DATABASE_UNUSABLE
    buffer = RecordBuffer(con)

    def own_event(event: LogEvent) -> None:
        try:
            buffer.add(event)
        except RecordRejected:  # an event naming a run this database does not know: keep it in the file only
            pass

    log = configure_logging("recorder", cfg.run_dir / "logs", forward=own_event)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.ROUTER)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVHWM, 100_000)
    pull.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a sender that reconnects under its identity takes over
    control = ctx.socket(zmq.REP)
    control.setsockopt(zmq.LINGER, 1000)
    parent = os.getppid()
    queries: QueryService | None = None
    flush_ms: list[float] = []  # how long each commit took, for the closing event

    stop_on_signals()

    def receive(frames: list[bytes]) -> None:
        identity, body = frames[0], frames[1:]
        if len(body) != 3 or not body[0].isdigit() or len(body[0]) > 18 or int(body[0]) < 1:
            log.warning("bad_frame", reason="expected [seq, topic, json] from a record sender", frames=len(body))
            return
        sender = identity.decode("latin-1")
        state = buffer.accept(sender, int(body[0]))
        if state == "duplicate":  # already here: say so again, the first ack may have been lost
            if sender in buffer.committed:
                pull.send_multipart([identity, b"ack", str(buffer.committed[sender]).encode()])
            return
        if state == "gap":  # an earlier message is missing; the sender resends everything unacknowledged in order
            out_of_order[sender] = out_of_order.get(sender, 0) + 1
            return
        try:
            buffer.add(decode(body[1:]))
        except BusDecodeError as exc:
            log.warning("bad_frame", reason=exc.reason, frames=len(body))
        except RecordRejected as exc:
            log.warning("record_rejected", reason=str(exc))
        except Exception as exc:  # a valid message no row can hold (a timestamp past year 9999, say)
            log.warning("record_rejected", reason=f"{type(exc).__name__}: {str(exc)[:300]}")

    out_of_order: dict[str, int] = {}

    def flush() -> None:
        if out_of_order:
            log.info("out_of_order", dropped=sum(out_of_order.values()), senders=len(out_of_order))
            out_of_order.clear()
        started = time.perf_counter()
        committed = buffer.flush()
        if committed:
            flush_ms.append((time.perf_counter() - started) * 1000)
        for sender, seq in committed.items():
            pull.send_multipart([sender.encode("latin-1"), b"ack", str(seq).encode()])

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
        queries = QueryService(con, ctx, query_endpoint_for(cfg.run_dir, os.getpid()), log)
        poller.register(pull, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        poller.register(queries.socket, zmq.POLLIN)
        poller.register(queries.results, zmq.POLLIN)
        publish_endpoint(
            RecorderEndpoint(pid=os.getpid(), db_path=str(cfg.db_path.resolve()), query_endpoint=queries.endpoint,
                             control_endpoint=cfg.control_endpoint, started_at=time.time())
        )  # fmt: skip
        log.info("recorder_ready", db=str(cfg.db_path), endpoint=cfg.endpoint, query_endpoint=queries.endpoint)
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
            if queries.socket in ready:
                queries.receive()
            if queries.results in ready:
                queries.deliver()
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
                    flush()
                    last_flush = time.monotonic()
                stopping = request.op == "stop"
                control.send_multipart(
                    encode(ControlReply(op=request.op, ok=True, pid=os.getpid(), rows_written=buffer.written))
                )
            if buffer.pending >= cfg.batch_rows or (
                buffer.unsaved and time.monotonic() - last_flush >= cfg.flush_interval_s
            ):
                flush()
                last_flush = time.monotonic()
            if os.getppid() != parent:
                log.error("orchestrator_gone")
                stopping = True
        return 0
    except Stop as stop:
        log.warning("recorder_stopped", signal=str(stop))
        drain()
        return 0
    except (zmq.ZMQError, OSError) as exc:
        print(f"recorder: cannot bind {cfg.endpoint} or publish its endpoint: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        ignore_signals()
        if queries is not None:
            queries.close()
            withdraw_endpoint(cfg.db_path.resolve(), os.getpid())
        flush()
        timings = sorted(flush_ms) or [0.0]
        log.info(
            "recorder_closing", rows_written=buffer.written + buffer.pending, flushes=len(flush_ms),
            flush_ms_p50=round(timings[len(timings) // 2], 3), flush_ms_p99=round(timings[int(len(timings) * 0.99)], 3),
            flush_ms_max=round(timings[-1], 3), queries_answered=queries.answered if queries is not None else 0,
        )  # fmt: skip
        flush()
        con.execute("CHECKPOINT")
        con.close()
        pull.close()
        control.close()
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    return serve(read_config(RecorderConfig, "python -m storage", "ReflectNet recorder process", argv))
