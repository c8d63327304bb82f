"""Queries while a run is going: the recorder answers read-only SELECTs over what it has committed.

DuckDB lets no second process open a file that a writer holds, not even read-only ("Conflicting lock
is held"). So while a run is going, ``run.py sql`` and ``run.py report`` ask the recorder that owns the
file. The recorder says where in ``<db>.recorder.json`` (its pid and query endpoint: written once it
serves, removed at a clean exit, stale when its pid is gone) and answers on a socket of its own, from a
worker thread, so a slow query never holds up records, acknowledgements or the orchestrator's control
requests (DuckDB releases the GIL while it executes).

What the recorder runs is exactly one SELECT statement (as DuckDB's own parser classifies it:
``SELECT``, ``FROM t``, ``WITH``, ``VALUES``, ``DESCRIBE``, ``SUMMARIZE``, ``SHOW`` are SELECTs; ``PRAGMA``,
``COPY``, ``CALL``, ``SET``, ``ATTACH`` and every write are not), on a cursor of its own, inside a
transaction that is rolled back, so it sees the last committed batch and can change nothing; with a
time limit and caps on rows and bytes. File access from SQL is switched off in the recorder
(``enable_external_access = false``), so a query cannot read other files with the recorder's rights.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
import zmq
from pydantic import BaseModel, ConfigDict, ValidationError

from bus.messages import BusDecodeError, QueryReply, QueryRequest, decode, encode
from storage.database import first_line

# The reply must stay well under the bus's frame limit (bus.messages.MAX_FRAME_BYTES).
MAX_REPLY_BYTES = 16 * 1024 * 1024
QUERY_TIMEOUT_S = 60.0
MAX_QUEUED_QUERIES = 8
IPC_PATH_LIMIT = 100  # sockaddr_un.sun_path holds 108 bytes


class QueryRefused(ValueError):
    """A query the live recorder does not run; the message says why, in one line."""


class RecorderUnavailable(QueryRefused):
    """The recorder did not answer, or answered that it is stopping (the run ended meanwhile)."""


@dataclass(frozen=True)
class QueryResult:
    """Rows of one query, from either a read-only connection or the live recorder."""

    columns: list[str]
    types: list[str]
    rows: list[tuple]
    truncated: bool = False  # the live recorder returned only the first rows


# --------------------------------------------------------------------------- where the live recorder is


class RecorderEndpoint(BaseModel):
    """The content of ``<db>.recorder.json``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    pid: int
    db_path: str
    query_endpoint: str
    control_endpoint: str
    started_at: float


def endpoint_file(db: Path) -> Path:
    """Where the recorder holding ``db`` says how to reach it."""
    return db.with_name(db.name + ".recorder.json")


def publish_endpoint(info: RecorderEndpoint) -> Path:
    """Write ``<db>.recorder.json`` atomically (a reader never sees half a file)."""
    path = endpoint_file(Path(info.db_path))
    partial = path.with_name(f"{path.name}.{info.pid}.tmp")
    partial.write_text(info.model_dump_json(indent=2))
    os.replace(partial, path)
    return path


def withdraw_endpoint(db: Path, pid: int) -> None:
    """Remove ``<db>.recorder.json`` if it is still this recorder's (a newer one may have replaced it)."""
    info = read_endpoint(db)
    if info is not None and info.pid == pid:
        endpoint_file(db).unlink(missing_ok=True)


def read_endpoint(db: Path) -> RecorderEndpoint | None:
    """The recorder's published endpoint, or None when there is none or it cannot be read."""
    try:
        return RecorderEndpoint.model_validate_json(endpoint_file(db).read_text())
    except (OSError, ValidationError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: the signal test is all we have
    return state != "Z"


def live_recorder(db: Path) -> RecorderEndpoint | None:
    """The recorder that holds ``db`` now, if its published endpoint is not stale."""
    info = read_endpoint(db)
    if info is None or Path(info.db_path) != db.resolve() or not pid_alive(info.pid):
        return None
    return info


def query_endpoint_for(run_dir: Path, pid: int) -> str:
    """An ipc endpoint in the run directory (only this user can connect: the socket file is not
    writable by others), or loopback tcp with a port the OS picks when the path is too long."""
    path = run_dir.resolve() / f"recorder-query-{pid}.ipc"
    return f"ipc://{path}" if len(str(path)) <= IPC_PATH_LIMIT else "tcp://127.0.0.1:*"


# --------------------------------------------------------------------------- values on the wire


def to_json_value(value: Any) -> Any:
    """``value`` as DuckDB's Python client returns it, made JSON-safe (see :func:`from_json_value`)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (datetime, date, time_of_day)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return str(value)  # Decimal, UUID, and anything else DuckDB may add


def from_json_value(value: Any, type_name: str) -> Any:
    """Undo :func:`to_json_value` for a column of DuckDB type ``type_name``: scalar types only; a list,
    struct or map column (``TIMESTAMP[]``, ``STRUCT(...)``) and a value that does not parse keep their
    JSON form."""
    if value is None or not isinstance(value, (str, int, float)):
        return value
    kind = type_name.upper()
    scalar = {
        "DATE": date.fromisoformat,
        "UUID": UUID,
        "INTERVAL": lambda v: timedelta(seconds=v),
        "BLOB": bytes.fromhex,
    }
    if kind.startswith("TIMESTAMP"):
        convert = datetime.fromisoformat
    elif kind.startswith("TIME"):
        convert = time_of_day.fromisoformat
    elif kind.startswith("DECIMAL"):
        convert = Decimal
    else:
        convert = scalar.get(kind)
    if convert is None or "[" in kind:
        return value
    try:
        return convert(value)
    except (ValueError, TypeError, ArithmeticError):  # decimal.InvalidOperation is an ArithmeticError
        return value


# --------------------------------------------------------------------------- the recorder's side


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


# --------------------------------------------------------------------------- the client's side


class LiveRecorder:
    """Ask the live recorder holding a database: ``query(sql, params)`` like a read-only connection.

    Each query goes out on a fresh REQ socket (one that missed its reply cannot send again) and waits
    for the reply while checking that the recorder is still alive, so a recorder that exits mid-query
    (the run ended, or it crashed) is noticed within a fraction of a second, not at the timeout.
    """

    def __init__(self, info: RecorderEndpoint, timeout_s: float = QUERY_TIMEOUT_S + 5, max_rows: int = 100_000):
        self.info = info
        self.timeout_s = timeout_s
        self.max_rows = max_rows
        self._ctx = zmq.Context()

    def query(self, sql: str, params: Sequence = ()) -> QueryResult:
        """The rows of one SELECT; raises :class:`QueryRefused` with the recorder's reason, or
        :class:`RecorderUnavailable` when it does not answer."""
        request = QueryRequest(sql=sql, params=list(params), max_rows=self.max_rows)
        reply = self._ask(request)
        if not reply.ok:
            raise QueryRefused(reply.error or "refused")
        rows = [tuple(from_json_value(v, t) for v, t in zip(row, reply.types)) for row in reply.rows]
        return QueryResult(reply.columns, reply.types, rows, reply.truncated)

    def _ask(self, request: QueryRequest) -> QueryReply:
        unavailable = f"the recorder (pid {self.info.pid}) holding {self.info.db_path} did not answer"
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.info.query_endpoint)
            sock.send_multipart(encode(request))
            deadline = time.monotonic() + self.timeout_s
            while not sock.poll(200, zmq.POLLIN):
                if not pid_alive(self.info.pid):
                    raise RecorderUnavailable(f"{unavailable}: it exited")
                if time.monotonic() > deadline:
                    raise RecorderUnavailable(f"{unavailable} within {self.timeout_s:g} s")
            frames = sock.recv_multipart()
        finally:
            sock.close()
        try:
            reply = decode(frames)
        except BusDecodeError as exc:
            raise QueryRefused(f"{unavailable} properly: {exc.reason}") from None
        if not isinstance(reply, QueryReply):
            raise QueryRefused(f"{unavailable} with a query reply but with a {reply.TOPIC}")
        if reply.stopping:
            raise RecorderUnavailable(f"{unavailable}: {reply.error}")
        return reply

    def close(self) -> None:
        """Release the client's ZeroMQ context."""
        self._ctx.term()
