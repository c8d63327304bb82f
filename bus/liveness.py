"""Liveness over the bus: a frozen peer is noticed within seconds, not waited on.

A process that dies closes its sockets: its exit code and the REQ client's disconnect monitor tell at
once. A *frozen* one — stopped (SIGSTOP), a user's node deadlocked, a C call that never returns —
keeps its sockets open and only stops answering, so nothing but a question reveals it. Two halves:

* :class:`HealthResponder`, a thread inside a service (the agent), answers ``ping`` on its own REP
  socket with how long the main loop has been busy on its current request (:class:`BusyClock`). A
  stopped process does not answer at all; a deadlocked main loop answers with a growing ``busy_s``.
* :class:`LivenessProbe`, a thread in the orchestrator, pings each watched child every
  ``interval_s``; a child that answered once since its start and then misses ``misses`` pings in a
  row, or reports ``busy_s`` above its limit, is *hung*. The orchestrator's loop reads
  :meth:`LivenessProbe.hung` and restarts it (the model server has its own HTTP probe,
  ``model_server.manager.HangProbe``).

The recorder needs no responder: its control socket is served by its main loop, so a ping there is
already a liveness check of the loop itself.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import zmq

from bus.messages import BusDecodeError, ControlReply, ControlRequest, decode, encode
from bus.transport import RequestClient

PING_INTERVAL_S = 1.0


class BusyClock:
    """How long the main loop has been working on its current request (seconds; 0 when idle).

    Written by the main thread (``with clock.busy(): ...``), read by the responder thread; a float
    assignment is atomic under the GIL, so no lock is needed.
    """

    def __init__(self) -> None:
        self._since: float | None = None

    @contextmanager
    def busy(self):
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._since = None

    @property
    def busy_s(self) -> float:
        since = self._since
        return 0.0 if since is None else time.monotonic() - since


class HealthResponder:
    """Answers ``ControlRequest(op="ping")`` on ``endpoint`` from a daemon thread with
    ``ControlReply(op="ping", ok=True, busy_s=...)``; anything else gets ``ok=False`` and a reason.

    Start with :meth:`start` (binds, raises ``zmq.ZMQError`` if the endpoint is taken) and call
    :meth:`stop` before the context is terminated.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, clock: BusyClock):
        self.endpoint = endpoint
        self.clock = clock
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="health-responder")

    def start(self) -> HealthResponder:
        self._sock.bind(self.endpoint)
        self._thread.start()
        return self

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._sock.poll(100, zmq.POLLIN):
                    continue
                frames = self._sock.recv_multipart()
                try:
                    request = decode(frames)
                    ok = isinstance(request, ControlRequest) and request.op == "ping"
                    detail = None if ok else f"the health socket answers only ping, got {request.TOPIC!r}"
                except BusDecodeError as exc:
                    ok, detail = False, exc.reason
                reply = ControlReply(op="ping", ok=ok, pid=os.getpid(), busy_s=self.clock.busy_s, detail=detail)
                self._sock.send_multipart(encode(reply))
        except zmq.ZMQError:  # the context is being terminated under us: the process is exiting
            return
        finally:
            self._sock.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        else:  # never started (the bind failed) or already done: the socket is ours to close
            self._sock.close(linger=0)


class HealthCheck:
    """One ping of a :class:`HealthResponder`, for a client deciding whether to retry (callable).

    ``check(waited_s)`` returns None when the peer answered within ``timeout_ms`` and is either idle
    or busy for no longer than the try has waited (+ ``slack_s``) — i.e. still on *this* request, a
    slow peer that a retry will find done (the agent caches its answer) — else the reason: no answer
    (frozen), or busy since before this request was sent (stuck on an earlier one).
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, timeout_ms: int = 1000, slack_s: float = 1.0):
        self.slack_s = slack_s
        self._client = RequestClient(ctx, endpoint, timeout_ms, retries=0)

    def __call__(self, waited_s: float) -> str | None:
        outcome = self._client.request(ControlRequest(op="ping"))
        reply = outcome.reply
        if not isinstance(reply, ControlReply) or not reply.ok:
            return f"no answer to a liveness ping ({outcome.error or 'refused'})"
        if (reply.busy_s or 0.0) > waited_s + self.slack_s:
            return f"busy for {reply.busy_s:.1f} s, since before this request was sent"
        return None

    def close(self) -> None:
        self._client.close()


@dataclass(eq=False)  # identity: two watches of one endpoint are distinct
class _Watched:
    endpoint: str
    process: object  # the child's Popen: a verdict is about this process, not one restarted since
    busy_limit_s: float | None
    misses: int  # pings in a row without an answer that make it hung
    client: RequestClient | None = None  # opened and used by the probe thread only
    answered: bool = False  # armed only after the first answer: a child still starting is not hung
    missed: int = 0
    verdict: str | None = None


class LivenessProbe:
    """Pings watched children every ``interval_s`` (each ping waits ``timeout_s``) from one thread.

    A child is hung when, after it has answered once, ``misses`` pings in a row get no answer, or
    it reports ``busy_s`` above its ``busy_limit_s``. The verdict holds for the process object it was
    made about; :meth:`watch` the restarted process to start afresh. The thread owns its sockets.
    """

    def __init__(self, ctx: zmq.Context, interval_s: float = PING_INTERVAL_S, timeout_s: float = 1.0, misses: int = 3):
        if interval_s <= 0 or timeout_s <= 0 or misses < 1:
            raise ValueError(
                f"need interval_s > 0, timeout_s > 0, misses >= 1; got {interval_s=}, {timeout_s=}, {misses=}"
            )
        self.ctx = ctx
        self.interval_s, self.timeout_s, self.misses = interval_s, timeout_s, misses
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="liveness-probe")

    def start(self) -> LivenessProbe:
        self._thread.start()
        return self

    def watch(
        self, name: str, endpoint: str, process, busy_limit_s: float | None = None, misses: int | None = None
    ) -> None:
        """Watch ``process`` (a Popen) answering on ``endpoint``; replaces an earlier watch of ``name``.
        ``misses`` overrides the probe's count for a child whose loop may legitimately stall longer."""
        with self._lock:
            self._watched[name] = _Watched(endpoint, process, busy_limit_s, misses or self.misses)

    def unwatch(self, name: str) -> None:
        with self._lock:
            self._watched.pop(name, None)

    def hung(self, name: str, process) -> str | None:
        """Why ``process`` (the child now known as ``name``) counts as hung, or None."""
        with self._lock:
            watched = self._watched.get(name)
            if watched is None or watched.process is not process:
                return None
            return watched.verdict

    def _run(self) -> None:
        live: list[_Watched] = []  # watches whose REQ socket this thread opened
        try:
            while not self._stop.wait(self.interval_s):
                with self._lock:
                    targets = list(self._watched.values())
                for gone in [w for w in live if w not in targets]:  # replaced or unwatched: close its socket
                    gone.client.close()
                    live.remove(gone)
                for watched in targets:
                    if self._stop.is_set():
                        return
                    if watched.verdict is None:
                        if watched.client is None:
                            watched.client = RequestClient(self.ctx, watched.endpoint, int(self.timeout_s * 1000), 0)
                            live.append(watched)
                        self._ping(watched)
        finally:
            for watched in live:
                watched.client.close()

    def _ping(self, watched: _Watched) -> None:
        reply = watched.client.request(ControlRequest(op="ping")).reply
        if isinstance(reply, ControlReply) and reply.ok:
            watched.answered, watched.missed = True, 0
            if watched.busy_limit_s is not None and (reply.busy_s or 0.0) > watched.busy_limit_s:
                watched.verdict = f"busy on one request for {reply.busy_s:.0f} s (limit {watched.busy_limit_s:g} s)"
        elif watched.answered:
            watched.missed += 1
            if watched.missed >= watched.misses:
                watched.verdict = f"no answer to {watched.missed} liveness pings in a row"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
