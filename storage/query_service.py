"""The recorder's side of live queries (``storage.live``): the check that a query is one SELECT, its
read-only execution with caps on rows and bytes, and :class:`QueryService`, the socket and worker thread
that answer queries without holding up the recorder's main loop."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from pathlib import Path

import duckdb
import zmq

from bus.messages import BusDecodeError, QueryReply, QueryRequest, decode, encode
from storage.database import first_line
from storage.query_values import QUERY_TIMEOUT_S, QueryRefused, to_json_value

# The reply must stay well under the bus's frame limit (bus.messages.MAX_FRAME_BYTES).
MAX_REPLY_BYTES = 16 * 1024 * 1024
MAX_QUEUED_QUERIES = 8
IPC_PATH_LIMIT = 100  # sockaddr_un.sun_path holds 108 bytes


def query_endpoint_for(run_dir: Path, pid: int) -> str:
    """An ipc endpoint in the run directory (only this user can connect: the socket file is not
    writable by others), or loopback tcp with a port the OS picks when the path is too long."""
    path = run_dir.resolve() / f"recorder-query-{pid}.ipc"
    return f"ipc://{path}" if len(str(path)) <= IPC_PATH_LIMIT else "tcp://127.0.0.1:*"


def check_select(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise :class:`QueryRefused` unless ``sql`` is exactly one SELECT statement."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"SQL error: {first_line(exc)}") from None
    if len(statements) != 1:
        raise QueryRefused(f"the live recorder answers one statement per query, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryRefused(
            f"the live recorder answers SELECT statements only (a run is writing this database), got {kind.name}"
        )


def answer_query(
    cursor: duckdb.DuckDBPyConnection, request: QueryRequest, max_bytes: int = MAX_REPLY_BYTES
) -> QueryReply:
    """Run ``request`` on ``cursor`` read-only: checked to be one SELECT, inside a rolled-back transaction."""
    started = time.perf_counter()
    pid = os.getpid()
    try:
        check_select(cursor, request.sql)
        cursor.execute("BEGIN TRANSACTION")
        try:
            cursor.execute(request.sql, request.params)
            columns = [d[0] for d in cursor.description]
            types = [str(d[1]) for d in cursor.description]
            rows, truncated = _fetch_bounded(cursor, request.max_rows, max_bytes)
        finally:
            cursor.execute("ROLLBACK")
    except QueryRefused as exc:
        return QueryReply(ok=False, pid=pid, error=str(exc))
    except duckdb.Error as exc:
        return QueryReply(ok=False, pid=pid, error=f"SQL error: {first_line(exc)}")
    elapsed_ms = (time.perf_counter() - started) * 1000
    return QueryReply(ok=True, pid=pid, columns=columns, types=types, rows=rows, truncated=truncated,
                      elapsed_ms=round(elapsed_ms, 3))  # fmt: skip


FETCH_CHUNK_ROWS = 1000


def _fetch_bounded(cursor: duckdb.DuckDBPyConnection, max_rows: int, max_bytes: int) -> tuple[list[list], bool]:
    """The result's rows as JSON-safe lists, fetched in chunks and stopped at ``max_rows`` rows or
    ``max_bytes`` of JSON, so a huge result never sits in the recorder's memory; and whether it was cut."""
    rows: list[list] = []
    size = 0
    while len(rows) < max_rows:
        chunk = cursor.fetchmany(min(FETCH_CHUNK_ROWS, max_rows - len(rows)))
        if not chunk:
            return rows, False
        for row in chunk:
            values = [to_json_value(v) for v in row]
            size += len(json.dumps(values, allow_nan=True)) + 2
            if size > max_bytes:
                return rows, True
            rows.append(values)
    return rows, bool(cursor.fetchmany(1))


class QueryService:
    """The recorder's query socket and the worker thread that answers it.

    Clients connect a REQ socket (:class:`LiveRecorder`) to a ROUTER bound here. The main loop polls
    :attr:`socket` and :attr:`results` and calls :meth:`receive` / :meth:`deliver`; queries wait in a
    queue (at most ``MAX_QUEUED_QUERIES``, then "busy") for the worker, which runs them on a cursor of
    its own, interrupts one after ``timeout_s``, and hands the reply back over an inproc pair.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, ctx: zmq.Context, endpoint: str, log,
                 timeout_s: float = QUERY_TIMEOUT_S):  # fmt: skip
        self.log = log
        self.timeout_s = timeout_s
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError:
            self.socket.close()  # an open socket would keep ctx.term() waiting forever
            raise
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        pair = f"inproc://query-results-{uuid.uuid4().hex}"
        self.results = ctx.socket(zmq.PAIR)
        self.results.setsockopt(zmq.LINGER, 0)
        self.results.bind(pair)
        self._ctx, self._pair = ctx, pair
        self._cursor = con.cursor()
        self._jobs: queue.Queue = queue.Queue(MAX_QUEUED_QUERIES)
        self._running = threading.Lock()  # held while the worker executes, so close() knows to interrupt
        self._stopping = False
        self.answered = 0
        self._worker = threading.Thread(target=self._work, name="query-worker", daemon=True)
        self._worker.start()

    def receive(self) -> None:
        """Take the queries waiting on the socket: queue each, or answer at once if it cannot run."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2 or frames[1] != b"":
                self.log.warning("bad_query_frame", reason="expected a REQ envelope [identity, '', topic, json]")
                continue
            envelope, body = frames[:2], frames[2:]
            try:
                request = decode(body)
            except BusDecodeError as exc:
                self.log.warning("bad_query_frame", reason=exc.reason)
                self._reply(envelope, QueryReply(ok=False, pid=os.getpid(), error=exc.reason))
                continue
            if not isinstance(request, QueryRequest):
                self._reply(envelope, QueryReply(ok=False, pid=os.getpid(), error=f"{request.TOPIC} is not a query"))
                continue
            try:
                self._jobs.put_nowait((envelope, request))
            except queue.Full:
                busy = f"the recorder is busy with {MAX_QUEUED_QUERIES} queries; ask again"
                self._reply(envelope, QueryReply(ok=False, pid=os.getpid(), error=busy))

    def deliver(self) -> None:
        """Send the worker's finished replies to their clients."""
        while True:
            try:
                frames = self.results.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.socket.send_multipart(frames)
            self.answered += 1

    def _reply(self, envelope: list[bytes], reply: QueryReply) -> None:
        self.socket.send_multipart([*envelope, *encode(reply)])

    def _work(self) -> None:
        out = self._ctx.socket(zmq.PAIR)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(self._pair)
        try:
            while (job := self._jobs.get()) is not None:
                envelope, request = job
                with self._running:
                    if self._stopping:  # close() came between taking the job and starting it: do not start
                        out.send_multipart([*envelope, *encode(_stopping_reply())])
                        continue
                    timer = threading.Timer(self.timeout_s, self._cursor.interrupt)
                    timer.start()
                    try:
                        reply = answer_query(self._cursor, request)
                    except Exception as exc:  # the client hears why; the worker lives on
                        reply = QueryReply(ok=False, pid=os.getpid(), error=f"{type(exc).__name__}: {str(exc)[:300]}")
                    finally:
                        timer.cancel()
                if self._stopping:
                    reply = _stopping_reply()
                elif not reply.ok and "INTERRUPT" in (reply.error or "").upper():
                    reply = reply.model_copy(update={"error": f"the query ran longer than {self.timeout_s:g} s"})
                out.send_multipart([*envelope, *encode(reply)])
        finally:
            out.close()
            self._cursor.close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker and close the sockets. Queries still waiting, and one interrupted mid-way, are
        answered "stopping", which sends the client to the file itself once the recorder has let go."""
        self._stopping = True
        while True:
            try:
                envelope, _ = self._jobs.get_nowait()
            except queue.Empty:
                break
            self._reply(envelope, _stopping_reply())
        self._jobs.put(None)
        if self._running.locked():
            self._cursor.interrupt()
        self._worker.join(timeout_s)
        self.deliver()
        self.socket.close(linger=500)  # let the last replies out
        self.results.close()


def _stopping_reply() -> QueryReply:
    return QueryReply(ok=False, pid=os.getpid(), stopping=True, error="the recorder is stopping")
