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

import os
import sys
import time
from pathlib import Path

import duckdb
import zmq
from pydantic import BaseModel, ConfigDict, model_validator

from bus.curve import (
    REFUSED_EVENTS,
    ClusterServerKeys,
    check_cluster_endpoint,
    refusals,
    serve_curve,
    start_authenticator,
)
from bus.child import EXIT_BIND_FAILED, EXIT_DATABASE_UNUSABLE, EXIT_OK, Child, run_child
from bus.lifecycle import Stop, ignore_signals
from bus.messages import BusDecodeError, ControlReply, ControlRequest, LogEvent, decode, encode
from bus.discovery import RecorderEndpoint, publish, withdraw
from bus.transport import check_endpoint
from storage.database import DatabaseLocked, DatabaseUnusable, first_line, open_database
from storage.query_service import QueryService, query_endpoint_for
from storage.record_buffer import RecordBuffer, RecordRejected  # RecordRejected: importable from here too
from storage.schema import migrate

# How long the recorder waits for a reader (run.py sql / report) to let go of the file at start.
LOCK_WAIT_S = 10.0


REFUSAL_LOG_S = 10.0  # a refused cluster peer is logged at most this often per reason


class RecorderConfig(BaseModel):
    """The recorder process's settings (frozen; unknown fields are an error).

    * ``db_path``: the DuckDB file the recorder owns (migrated at start; its live-query endpoint is
      published beside it, ``<db>.recorder.json``).
    * ``endpoint``: ZeroMQ address (``tcp://`` or ``ipc://``) the ROUTER socket binds: records from every
      process, ``[seq, topic, json]`` under each sender's identity, acknowledged after each commit.
    * ``control_endpoint``: ZeroMQ address the REP socket binds: the orchestrator's control requests
      (``ping``, ``sync``, ``stop``).
    * ``run_dir``: the run's directory; the live-query socket (``storage.live``) is an ipc file in it.
    * ``flush_interval_s``: seconds between commits at most while rows or watermarks are pending.
    * ``batch_rows``: pending rows that force a commit sooner.
    * ``allow_remote``: allow a non-loopback tcp address (only when the user passed one explicitly);
      otherwise validation raises ``ValueError`` (a pydantic ``ValidationError``) for one.
    * ``cluster_endpoint``: records from other hosts (``tcp://HOST:PORT``), a second ROUTER socket that speaks only
      CURVE with ``cluster_keys`` (``bus.curve``); a cluster endpoint without keys is a ``ValueError``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    db_path: Path
    endpoint: str  # ROUTER: records from every process
    control_endpoint: str  # REP: orchestrator control
    run_dir: Path
    flush_interval_s: float = 0.25
    batch_rows: int = 500
    allow_remote: bool = False  # bind a non-loopback address (only when the user passed one explicitly)
    cluster_endpoint: str | None = None  # ROUTER, CURVE only: records from other hosts
    cluster_keys: ClusterServerKeys | None = None

    @model_validator(mode="after")
    def _loopback_unless_allowed(self):
        check_endpoint(self.endpoint, self.allow_remote)
        check_endpoint(self.control_endpoint, self.allow_remote)
        if self.cluster_endpoint is not None:
            check_cluster_endpoint(self.cluster_endpoint, self.cluster_keys)
        return self


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


class Recorder:
    """The recorder's sockets and loop over one open database: records in (ROUTER), control requests (REP),
    live queries (``storage.live``); batched commits, each followed by the senders' acknowledgements."""

    def __init__(self, cfg: RecorderConfig, con: duckdb.DuckDBPyConnection, child: Child):
        self.cfg, self.con, self.log = cfg, con, child.log
        self.buffer = RecordBuffer(con)
        self.pull = record_socket(child.ctx)
        self.reply_to: dict[str, zmq.Socket] = {}  # sender -> the socket its records came in on (its acks go there)
        self.cluster = self.cluster_monitor = self.authenticator = None
        self.refused: dict[str, int] = {}  # refusals not yet logged, by reason
        self.refusal_logged: dict[str, float] = {}
        if cfg.cluster_endpoint is not None:  # other hosts: CURVE with this invocation's keys only (bus.curve)
            self.authenticator = start_authenticator(child.ctx, cfg.cluster_keys)
            self.cluster = record_socket(child.ctx)
            serve_curve(self.cluster, cfg.cluster_keys)
            self.cluster_monitor = self.cluster.get_monitor_socket(sum(REFUSED_EVENTS))
        self.control = child.ctx.socket(zmq.REP)
        self.control.setsockopt(zmq.LINGER, 1000)
        self.queries: QueryService | None = None
        self.flush_ms: list[float] = []  # how long each commit took, for the closing event
        self.out_of_order: dict[str, int] = {}
        self.last_flush = time.monotonic()

    def own_event(self, event: LogEvent) -> None:
        """The recorder's own log events go straight into the buffer."""
        try:
            self.buffer.add(event)
        except RecordRejected:  # an event naming a run this database does not know: keep it in the file only
            pass

    def bind(self, ctx: zmq.Context) -> zmq.Poller:
        """Bind the sockets, publish the live-query endpoint; raises ZMQError / OSError."""
        cfg = self.cfg
        self.pull.bind(cfg.endpoint)
        self.control.bind(cfg.control_endpoint)
        if self.cluster is not None:
            self.cluster.bind(cfg.cluster_endpoint)
        self.queries = QueryService(self.con, ctx, query_endpoint_for(cfg.run_dir, os.getpid()), self.log)
        poller = zmq.Poller()
        for sock in (self.pull, self.control, self.queries.socket, self.queries.results, self.cluster,
                     self.cluster_monitor):  # fmt: skip
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        publish(
            RecorderEndpoint(pid=os.getpid(), db_path=str(cfg.db_path.resolve()), query_endpoint=self.queries.endpoint,
                             control_endpoint=cfg.control_endpoint, started_at=time.time())
        )  # fmt: skip
        self.log.info("recorder_ready", db=str(cfg.db_path), endpoint=cfg.endpoint, query_endpoint=self.queries.endpoint)
        return poller

    def receive(self, frames: list[bytes], sock: zmq.Socket | None = None) -> None:
        """One record ``[identity, seq, topic, json]`` that came in on ``sock`` (default: the local socket): taken
        once, in order, or dropped with a reason."""
        identity, body = frames[0], frames[1:]
        if len(body) != 3 or not body[0].isdigit() or len(body[0]) > 18 or int(body[0]) < 1:
            self.log.warning("bad_frame", reason="expected [seq, topic, json] from a record sender", frames=len(body))
            return
        sender = identity.decode("latin-1")
        self.reply_to[sender] = sock if sock is not None else self.pull
        state = self.buffer.accept(sender, int(body[0]))
        if state == "duplicate":  # already here: say so again, the first ack may have been lost
            if sender in self.buffer.committed:
                self.reply_to[sender].send_multipart([identity, b"ack", str(self.buffer.committed[sender]).encode()])
            return
        if state == "gap":  # an earlier message is missing; the sender resends everything unacknowledged in order
            self.out_of_order[sender] = self.out_of_order.get(sender, 0) + 1
            return
        try:
            self.buffer.add(decode(body[1:]))
        except BusDecodeError as exc:
            self.log.warning("bad_frame", reason=exc.reason, frames=len(body))
        except RecordRejected as exc:
            self.log.warning("record_rejected", reason=str(exc))
        except Exception as exc:  # a valid message no row can hold (a timestamp past year 9999, say)
            self.log.warning("record_rejected", reason=f"{type(exc).__name__}: {str(exc)[:300]}")

    def receive_batch(self, limit: int = 1000, sock: zmq.Socket | None = None) -> None:
        sock = sock if sock is not None else self.pull
        for _ in range(limit):
            try:
                self.receive(sock.recv_multipart(zmq.NOBLOCK), sock)
            except zmq.Again:
                break

    def log_refusals(self) -> None:
        """Log the peers the cluster socket turned away: each reason at once, then at most every
        :data:`REFUSAL_LOG_S` with how many since (a peer that keeps reconnecting must not flood ``events``)."""
        now = time.monotonic()
        for reason in refusals(self.cluster_monitor):
            self.refused[reason] = self.refused.get(reason, 0) + 1
        for reason, count in list(self.refused.items()):
            if now - self.refusal_logged.get(reason, -REFUSAL_LOG_S) >= REFUSAL_LOG_S:
                self.log.warning("cluster_peer_refused", reason=reason, refusals=count, endpoint=self.cfg.cluster_endpoint)
                self.refusal_logged[reason] = now
                del self.refused[reason]

    def flush(self) -> None:
        """Commit what is buffered, then acknowledge each sender's last committed message."""
        if self.out_of_order:
            self.log.info("out_of_order", dropped=sum(self.out_of_order.values()), senders=len(self.out_of_order))
            self.out_of_order.clear()
        started = time.perf_counter()
        committed = self.buffer.flush()
        if committed:
            self.flush_ms.append((time.perf_counter() - started) * 1000)
        for sender, seq in committed.items():
            self.reply_to.get(sender, self.pull).send_multipart([sender.encode("latin-1"), b"ack", str(seq).encode()])
        self.last_flush = time.monotonic()

    def drain(self) -> None:
        """Take everything already queued; stop after a short quiet spell."""
        while self.pull.poll(100, zmq.POLLIN):
            self.receive_batch(limit=1_000_000)
        while self.cluster is not None and self.cluster.poll(100, zmq.POLLIN):
            self.receive_batch(limit=1_000_000, sock=self.cluster)

    def control_request(self) -> bool:
        """Answer one control request; True when it was ``stop``."""
        try:
            request = decode(self.control.recv_multipart())
        except BusDecodeError as exc:
            self.log.warning("bad_control_frame", reason=exc.reason)
            self.control.send_multipart(encode(ControlReply(op="?", ok=False, pid=os.getpid(), detail=exc.reason)))
            return False
        if not isinstance(request, ControlRequest):
            reply = ControlReply(op=request.TOPIC, ok=False, pid=os.getpid(), detail="not a control request")
            self.control.send_multipart(encode(reply))
            return False
        if request.op in ("sync", "stop"):
            self.drain()
            self.flush()
        reply = ControlReply(op=request.op, ok=True, pid=os.getpid(), rows_written=self.buffer.written)
        self.control.send_multipart(encode(reply))
        return request.op == "stop"

    def loop(self, poller: zmq.Poller, child: Child) -> None:
        """Until ``stop`` or the orchestrator's exit: records, queries, control, and a commit at least every
        ``flush_interval_s`` (or every ``batch_rows`` rows)."""
        cfg, buffer = self.cfg, self.buffer
        while True:
            ready = dict(poller.poll(100))
            if self.pull in ready:
                self.receive_batch()
            if self.cluster is not None and self.cluster in ready:
                self.receive_batch(sock=self.cluster)
            if self.cluster_monitor is not None and self.cluster_monitor in ready:
                self.log_refusals()
            if self.queries.socket in ready:
                self.queries.receive()
            if self.queries.results in ready:
                self.queries.deliver()
            if self.control in ready and self.control_request():
                return
            if buffer.pending >= cfg.batch_rows or (
                buffer.unsaved and time.monotonic() - self.last_flush >= cfg.flush_interval_s
            ):
                self.flush()
            if child.orphaned():
                self.log.error("orchestrator_gone")
                return

    def close(self) -> None:
        """Withdraw the live endpoint, commit the rest, checkpoint, close the file and sockets."""
        if self.queries is not None:
            self.queries.close()
            withdraw(RecorderEndpoint, self.cfg.db_path.resolve(), os.getpid())
        self.flush()
        timings = sorted(self.flush_ms) or [0.0]
        self.log.info(
            "recorder_closing", rows_written=self.buffer.written + self.buffer.pending, flushes=len(self.flush_ms),
            flush_ms_p50=round(timings[len(timings) // 2], 3), flush_ms_p99=round(timings[int(len(timings) * 0.99)], 3),
            flush_ms_max=round(timings[-1], 3), queries_answered=self.queries.answered if self.queries else 0,
        )  # fmt: skip
        try:
            self.flush()
            self.con.execute("CHECKPOINT")
            self.con.close()
        finally:
            self.pull.close()
            self.control.close()
            if self.cluster is not None:  # the authenticator's thread holds a socket: the context cannot end before it
                self.cluster.disable_monitor()
                self.cluster_monitor.close(linger=0)
                self.cluster.close(linger=0)
                self.authenticator.stop()


def record_socket(ctx: zmq.Context) -> zmq.Socket:
    """A ROUTER for records: no linger, a deep queue, a sender reconnecting under its identity taking over."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    return sock


def serve(cfg: RecorderConfig, child: Child) -> int:
    """The recorder's body under the child-process runtime (``bus.child``); its exit code: 0 after a clean
    stop (``stop``, a signal, the orchestrator's exit); 2 when it cannot bind its sockets or the file stays
    locked by another process; :data:`EXIT_DATABASE_UNUSABLE` (65) when the database cannot be opened for a
    reason that a restart does not fix (an unreplayable WAL, not a DuckDB file): one line on stderr names it.
    """
    try:
        con = open_recorder_database(cfg.db_path)
    except DatabaseLocked as exc:
        print(f"recorder: {exc}", file=sys.stderr, flush=True)
        return EXIT_BIND_FAILED
    except DatabaseUnusable as exc:
        print(f"recorder: {exc}", file=sys.stderr, flush=True)
        return EXIT_DATABASE_UNUSABLE
    recorder = Recorder(cfg, con, child)
    child.event_sink = recorder.own_event
    try:
        recorder.loop(recorder.bind(child.ctx), child)
        return EXIT_OK
    except Stop as stop:
        recorder.log.warning("recorder_stopped", signal=str(stop))
        recorder.drain()
        return EXIT_OK
    except (zmq.ZMQError, OSError) as exc:
        print(f"recorder: cannot bind {cfg.endpoint} or publish its endpoint: {exc}", file=sys.stderr, flush=True)
        return EXIT_BIND_FAILED
    finally:
        ignore_signals()
        recorder.close()


def main(argv: list[str] | None = None) -> int:
    # The recorder is the sink: its own log events go into its buffer (child.event_sink), not over the bus.
    return run_child("recorder", RecorderConfig, serve, argv, forward_logs=False, stopped_code=EXIT_OK)
