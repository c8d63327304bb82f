"""ZeroMQ plumbing: loopback endpoints, the record sender, and a Lazy Pirate request client.

The traps this module handles on purpose (zguide ch. 2 and 4):

* LINGER: every socket gets a bounded linger, so ``close()`` never hangs on a dead peer. Record
  senders use a longer one so queued records still reach a live recorder at exit.
* Messages lost in flight (a recorder that crashed with records in memory, a connection reset, LINGER
  at exit): record senders keep every message until the recorder acknowledges its commit, and send
  again what is not acknowledged (:class:`RecordSender`); nothing blocks on a dead recorder.
* High-water marks: sends never block; what the socket cannot take now waits in the outbox.
* A peer that never answers: :class:`RequestClient` polls with a timeout, closes and reopens its
  REQ socket (a REQ socket that missed its reply is unusable), retries, then gives up with ``None``
  so the caller can fall back.
* Slow joiners: there is no PUB/SUB; REQ/REP handshakes (``Hello``/``Ready``, ``ping``) establish
  every peer before the first epoch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from bus.curve import ClusterClientKeys, connect_curve
from bus.messages import BusDecodeError, Message, decode, encode

LOOPBACK = "127.0.0.1"


# The longest path a Unix socket address holds (sun_path is 108 bytes on Linux, 104 on macOS, with its NUL).
MAX_IPC_PATH = 100
MAX_SOCKET_NAME = 24  # the longest name the orchestrator gives a socket, e.g. "agent-0123456789-health"


SOCKETS_NOTE = "sockets.txt"  # in a run directory whose sockets live elsewhere: where they are


def socket_folder(run_dir: Path) -> Path:
    """Where a run's ``ipc://`` sockets live: ``<run_dir>/sockets`` (mode 0700), or, when that path is too long
    for a socket address, one private folder under the system's temporary directory, chosen once per run and
    named in ``<run_dir>/sockets.txt`` (the same folder on every call; remove it with :func:`remove_socket_folder`).
    Raises OSError if it cannot be created."""
    run_dir = Path(run_dir).resolve()
    folder = run_dir / "sockets"
    if len(str(folder)) + MAX_SOCKET_NAME + 1 > MAX_IPC_PATH:
        note = run_dir / SOCKETS_NOTE
        if note.exists():
            folder = Path(note.read_text().strip())
        else:
            folder = Path(tempfile.mkdtemp(prefix="reflectnet-"))
            note.write_text(f"{folder}\n")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def remove_socket_folder(run_dir: Path) -> None:
    """Remove the temporary socket folder of a run (one under ``<run_dir>`` goes with the run directory)."""
    note = Path(run_dir) / SOCKETS_NOTE
    if note.exists():
        shutil.rmtree(note.read_text().strip(), ignore_errors=True)


def socket_name(kind: str, name: str) -> str:
    """A short, fixed-length socket file name for ``kind`` and any ``name`` (a controller may be a long
    ``package.module:factory``): ``<kind>-<10 hex digits of its hash>``, distinct for distinct names."""
    return f"{kind}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"


def ipc_endpoint(folder: Path, name: str) -> str:
    """``ipc://<folder>/<name>``: a local endpoint no other process can take between choosing and binding it
    (a probed free tcp port can be), private to the run whose :func:`socket_folder` it is in."""
    path = Path(folder) / name
    if len(str(path)) > MAX_IPC_PATH:
        raise ValueError(f"socket path {path} is longer than {MAX_IPC_PATH} characters")
    return f"ipc://{path}"


def free_tcp_endpoint(host: str = LOOPBACK) -> str:
    """A ``tcp://host:port`` endpoint on a port the OS reports free right now. Racy (another process may take
    the port before it is bound): local peers use :func:`ipc_endpoint`; this is for HTTP servers that need a
    port (the embedded llama.cpp server) and for tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    return f"tcp://{host}:{port}"


def check_endpoint(endpoint: str, allow_remote: bool = False) -> str:
    """Refuse non-loopback tcp endpoints unless the user asked for them explicitly."""
    if endpoint.startswith("ipc://"):
        return endpoint
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"endpoint must be tcp:// or ipc://, got {endpoint=}")
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
    if not allow_remote and host not in {LOOPBACK, "localhost", "[::1]"}:
        raise ValueError(f"endpoint {endpoint!r} is not loopback; pass an explicit address to allow it")
    return endpoint


class RecordSender:
    """DEALER socket to the recorder's ROUTER: every record is kept until the recorder acknowledges it.

    Each message travels as ``[seq, topic, json]`` under this sender's identity. The recorder commits
    the row and its ``(identity, seq)`` watermark in one transaction, then answers ``[b"ack", seq]``
    (cumulative). Until then the message stays in the outbox; when no ack has arrived for
    ``resend_after_s`` (a recorder that crashed and was restarted, a connection that broke) every
    unacknowledged message is sent again, in order. The recorder drops what it has already committed,
    so a record is stored exactly once. ``send`` never blocks: with no recorder connected
    (``IMMEDIATE``) the message waits in the outbox. ``curve``: this invocation's client keys, to send to the
    recorder's cluster socket from another host (``bus.curve``).
    """

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        resend_after_s: float = 2.0,
        max_pending: int = 200_000,
        identity: str | None = None,
        curve: ClusterClientKeys | None = None,
    ):
        self.identity = identity or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.ROUTING_ID, self.identity.encode())
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:  # the recorder's cluster socket, from another host (bus.curve)
            connect_curve(self._sock, curve)
        self._sock.connect(endpoint)
        self.resend_after_s = resend_after_s
        self.max_pending = max_pending
        self._pending: OrderedDict[int, tuple[Message, list[bytes]]] = OrderedDict()
        self._seq = 0
        self._next_unsent = 1  # messages from this seq on have not been handed to the socket yet
        self._last_progress = time.monotonic()
        self.acked = 0  # highest seq the recorder has committed
        self.resends = 0  # times the outbox was sent again
        self.dropped = 0  # messages refused (outbox full, sender closed) or never acknowledged before close

    @property
    def pending(self) -> int:
        return len(self._pending)

    def send(self, message: Message) -> bool:
        """Queue ``message`` for the recorder; False if it had to be given up (closed, or the outbox is full)."""
        if self._sock.closed or len(self._pending) >= self.max_pending:
            # Refuse the newest: dropping an older one would leave a hole the recorder waits on forever.
            self.dropped += 1
            return False
        self._seq += 1
        if not self._pending:
            self._last_progress = time.monotonic()  # the ack clock starts with the oldest pending message
        self._pending[self._seq] = (message, [str(self._seq).encode(), *encode(message)])
        self.pump()
        return True

    def _push(self) -> None:
        """Hand unsent messages to the socket in order, until it would block."""
        # The outbox holds exactly the seqs (oldest unacknowledged .. newest): no holes, so no scan.
        for seq in range(self._next_unsent, self._seq + 1):
            try:
                self._sock.send_multipart(self._pending[seq][1], zmq.NOBLOCK)
            except zmq.Again:
                return
            self._next_unsent = seq + 1

    def pump(self) -> None:
        """Take the acks that have arrived, send what waits, and resend after ``resend_after_s`` of silence."""
        if self._sock.closed:
            return
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) == 2 and frames[0] == b"ack" and frames[1].isdigit():
                self._acknowledge(int(frames[1]))
        if self._pending and time.monotonic() - self._last_progress > self.resend_after_s:
            self._next_unsent = next(iter(self._pending))
            self._last_progress = time.monotonic()
            self.resends += 1
        self._push()

    def _acknowledge(self, seq: int) -> None:
        if seq <= self.acked:
            return
        self.acked = seq
        while self._pending and next(iter(self._pending)) <= seq:
            self._pending.popitem(last=False)
        self._next_unsent = max(self._next_unsent, seq + 1)
        self._last_progress = time.monotonic()

    def unacked(self) -> list[Message]:
        """The messages the recorder has not confirmed yet, oldest first."""
        return [message for message, _ in self._pending.values()]

    def flush(self, timeout_s: float) -> bool:
        """Wait until the recorder has acknowledged everything; False if ``timeout_s`` ran out first."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.pump()
            if not self._pending:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._sock.closed:
                return False
            self._sock.poll(min(remaining, 0.05) * 1000, zmq.POLLIN)

    def close(self, timeout_s: float = 5.0) -> int:
        """Flush for up to ``timeout_s``, then close; returns how many messages were never acknowledged."""
        if self._sock.closed:
            return 0
        self.flush(timeout_s)
        lost = len(self._pending)
        self.dropped += lost
        self._pending.clear()
        self._sock.close(linger=0)
        return lost


@dataclass
class RequestOutcome:
    reply: Message | None
    attempts: int
    error: str | None = None


class RequestClient:
    """REQ client with timeout, retry and give-up (the zguide "Lazy Pirate")."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        timeout_ms: int,
        retries: int,
        health_check: Callable[[float], str | None] | None = None,
    ):
        """``health_check``, if given, is asked after a try that timed out, with the seconds that try
        waited (a disconnect needs no asking: the peer died and a restarted one gets the retry): it
        returns why the peer is unhealthy (frozen, stuck on an earlier request), and then no retry is
        sent — a peer known to be unhealthy is never waited on for a second timeout in a row (see
        bus.liveness)."""
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, got {timeout_ms=}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries=}")
        self._ctx = ctx
        self._endpoint = endpoint
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.health_check = health_check
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            self._sock = self._ctx.socket(zmq.REQ)
            self._sock.setsockopt(zmq.LINGER, 0)
            # A peer that dies mid-request closes the TCP connection: notice it now, not at the timeout.
            self._monitor = self._sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            self._sock.connect(self._endpoint)
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._sock.close(linger=0)
            self._sock = self._monitor = None

    def _disconnected(self) -> bool:
        """Whether the monitor reported a lost connection since the last call."""
        lost = False
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return lost
            lost = lost or event["event"] == zmq.EVENT_DISCONNECTED

    def request(
        self, message: Message, timeout_ms: int | None = None, cancelled: Callable[[], bool] | None = None
    ) -> RequestOutcome:
        """Send ``message`` and wait for its reply; ``reply`` is None after every try failed.

        A try ends at its timeout, or as soon as the connection to the peer breaks (the peer process
        died); the next try goes out on a fresh socket, which a restarted peer receives. ``cancelled``, asked
        about once a second while waiting, ends the request (no reply, error "cancelled", no further try): the
        trainer's decision thread stops this way at shutdown.
        """
        timeout = timeout_ms or self.timeout_ms
        error = None
        for attempt in range(1, self.retries + 2):
            sock = self._socket()
            frames = None
            try:
                self._disconnected()  # forget breaks from before this request
                sock.send_multipart(encode(message))
                deadline = time.monotonic() + timeout / 1000
                poller = zmq.Poller()
                poller.register(sock, zmq.POLLIN)
                poller.register(self._monitor, zmq.POLLIN)
                error = f"no reply within {timeout} ms"
                while (remaining := deadline - time.monotonic()) > 0:
                    # Short slices: a poll restarted after a signal (EINTR) can overrun the deadline by one slice only.
                    ready = dict(poller.poll(min(remaining, 1.0) * 1000))
                    if sock in ready:
                        frames = sock.recv_multipart()
                        break
                    if self._monitor in ready and self._disconnected():
                        error = "the peer disconnected before replying"
                        break
                    if cancelled is not None and cancelled():
                        self._reset()
                        return RequestOutcome(None, attempt, "cancelled")
            except BaseException:
                self._reset()  # a REQ socket interrupted mid-request cannot send again
                raise
            if frames is not None:
                try:
                    return RequestOutcome(decode(frames), attempt)
                except BusDecodeError as exc:
                    error = f"bad reply: {exc.reason}"
            self._reset()
            timed_out = frames is None and error.startswith("no reply")
            if timed_out and attempt <= self.retries and self.health_check is not None:
                unhealthy = self.health_check(timeout / 1000)
                if unhealthy is not None:
                    return RequestOutcome(None, attempt, f"{error}; not retried: {unhealthy}")
        return RequestOutcome(None, self.retries + 1, error)

    def close(self) -> None:
        self._reset()
