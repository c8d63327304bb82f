"""The client's side of live queries (``storage.live``): :class:`LiveRecorder` asks the recorder holding a
database, noticing within a fraction of a second when it exits instead of waiting for the timeout."""

from __future__ import annotations

import time
from collections.abc import Sequence

import zmq

from bus.discovery import RecorderEndpoint, pid_alive
from bus.messages import BusDecodeError, QueryReply, QueryRequest, decode, encode
from storage.query_values import QUERY_TIMEOUT_S, QueryRefused, QueryResult, RecorderUnavailable, from_json_value


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
