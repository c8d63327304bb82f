"""ZeroMQ plumbing: loopback endpoints, the record sender, and a Lazy Pirate request client.

The traps this module handles on purpose (zguide ch. 2 and 4):

* LINGER: every socket gets a bounded linger, so ``close()`` never hangs on a dead peer. Record
  senders use a longer one so queued records still reach a live recorder at exit.
* High-water marks: record senders use PUSH, which blocks rather than drops at the HWM; the send
  itself has a timeout so a dead recorder cannot freeze training.
* A peer that never answers: :class:`RequestClient` polls with a timeout, closes and reopens its
  REQ socket (a REQ socket that missed its reply is unusable), retries, then gives up with ``None``
  so the caller can fall back.
* Slow joiners: there is no PUB/SUB; REQ/REP handshakes (``Hello``/``Ready``, ``ping``) establish
  every peer before the first epoch.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import zmq

from bus.messages import BusDecodeError, Message, decode, encode

LOOPBACK = "127.0.0.1"


def free_tcp_endpoint(host: str = LOOPBACK) -> str:
    """A ``tcp://host:port`` endpoint on a port the OS reports free right now."""
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
    """PUSH socket to the recorder. ``send`` never blocks longer than ``send_timeout_ms``."""

    def __init__(self, ctx: zmq.Context, endpoint: str, send_timeout_ms: int = 2000, linger_ms: int = 5000):
        self._sock = ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.SNDTIMEO, send_timeout_ms)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.connect(endpoint)
        self.dropped = 0

    def send(self, message: Message) -> bool:
        if self._sock.closed:
            self.dropped += 1
            return False
        try:
            self._sock.send_multipart(encode(message))
            return True
        except zmq.Again:
            self.dropped += 1
            return False

    def close(self) -> None:
        self._sock.close()


@dataclass
class RequestOutcome:
    reply: Message | None
    attempts: int
    error: str | None = None


class RequestClient:
    """REQ client with timeout, retry and give-up (the zguide "Lazy Pirate")."""

    def __init__(self, ctx: zmq.Context, endpoint: str, timeout_ms: int, retries: int):
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, got {timeout_ms=}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries=}")
        self._ctx = ctx
        self._endpoint = endpoint
        self.timeout_ms = timeout_ms
        self.retries = retries
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            self._sock = self._ctx.socket(zmq.REQ)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.connect(self._endpoint)
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def request(self, message: Message, timeout_ms: int | None = None) -> RequestOutcome:
        """Send ``message`` and wait for its reply; ``reply`` is None after every try failed."""
        timeout = timeout_ms or self.timeout_ms
        error = None
        for attempt in range(1, self.retries + 2):
            sock = self._socket()
            try:
                sock.send_multipart(encode(message))
                ready = sock.poll(timeout, zmq.POLLIN)
                frames = sock.recv_multipart() if ready else None
            except BaseException:
                self._reset()  # a REQ socket interrupted mid-request cannot send again
                raise
            if frames is not None:
                try:
                    return RequestOutcome(decode(frames), attempt)
                except BusDecodeError as exc:
                    error = f"bad reply: {exc.reason}"
                    self._reset()
                    continue
            error = f"no reply within {timeout} ms"
            self._reset()
        return RequestOutcome(None, self.retries + 1, error)

    def close(self) -> None:
        self._reset()
