"""Records from other hosts: the recorder's cluster socket, authenticated and encrypted with ZeroMQ CURVE (issue 20).

Every local socket of an invocation is an ``ipc://`` path or loopback tcp. When arms train on other machines (a Ray
cluster), their records reach the recorder over TCP on a routable address; that socket speaks only CURVE
(RFC 26/CurveZMQ: Curve25519 key exchange, every frame encrypted and authenticated), and only with the client keys
made for this invocation: :func:`new_cluster_keys` makes the recorder's key pair and one client key pair per
invocation (``zmq.curve_keypair``), the recorder is given its secret and the allowed client public keys
(:class:`ClusterServerKeys`), the processes on other hosts the client pair and the recorder's public key
(:class:`ClusterClientKeys`). A plaintext peer, or one with other keys, never gets a frame through: the handshake
fails (a plaintext peer's for the mechanism, one with a stranger key at ZAP, pyzmq's
``zmq.auth.thread.ThreadAuthenticator``), and the recorder logs it (``cluster_peer_refused``) from the socket's
monitor. A plaintext socket on a non-loopback address is refused when the configuration is checked
(:func:`check_cluster_endpoint`).

The keys are Z85 text (40 characters); secrets travel only in the configuration files of the processes that need
them, never in the database.
"""

from __future__ import annotations

import zmq
import zmq.auth.thread
from pydantic import BaseModel, ConfigDict, Field

Z85_KEY = Field(min_length=40, max_length=40)
ZAP_DOMAIN = "reflectnet"  # the recorder's cluster socket asks ZAP about its peers under this domain
# ZMTP heartbeats (ms) for a socket whose peer is on another host: a peer whose node is gone stops counting as
# connected within seconds (the driver's steering socket then refuses a say to it instead of queueing it).
HEARTBEATS = ((zmq.HEARTBEAT_IVL, 1000), (zmq.HEARTBEAT_TIMEOUT, 5000))

# Monitor events that mean a peer was turned away (pyzmq >= 24 names them; libzmq >= 4.3).
REFUSED_EVENTS = {
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol error in the handshake",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication: a key this invocation did not make",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed: not CURVE (a plaintext peer) or broken",
}


class ClusterServerKeys(BaseModel):
    """The recorder's side: its key pair and the public keys of the clients it accepts (Z85 text)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    public: str = Z85_KEY
    secret: str = Z85_KEY
    clients: list[str] = Field(min_length=1)


class ClusterClientKeys(BaseModel):
    """A client's side: its key pair and the recorder's public key (Z85 text)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    public: str = Z85_KEY
    secret: str = Z85_KEY
    server_public: str = Z85_KEY


def new_cluster_keys() -> tuple[ClusterServerKeys, ClusterClientKeys]:
    """Fresh keys for one invocation: the recorder's pair and one client pair, each knowing the other's public key."""
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    server = ClusterServerKeys(public=server_public.decode(), secret=server_secret.decode(),
                               clients=[client_public.decode()])  # fmt: skip
    client = ClusterClientKeys(public=client_public.decode(), secret=client_secret.decode(),
                               server_public=server_public.decode())  # fmt: skip
    return server, client


CURVE_ENV = "REFLECTNET_RECORDER_CURVE"  # a child's client keys (ClusterClientKeys as JSON), set by a Ray arm's task


def curve_from_environment() -> ClusterClientKeys | None:
    """The client keys a child process is given in :data:`CURVE_ENV` (a Ray arm's: its records go to the recorder's
    cluster socket), None when it is not set (local children: ipc). ValueError for a value that is not such keys."""
    import os

    text = os.environ.get(CURVE_ENV)
    return ClusterClientKeys.model_validate_json(text) if text else None


def check_cluster_endpoint(endpoint: str, keys: ClusterServerKeys | ClusterClientKeys | None) -> str:
    """``endpoint`` if it may be used for records from other hosts: tcp, and CURVE keys given. Raises ValueError
    (one line) for anything else — above all a plaintext socket on a routable address."""
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"the cluster endpoint must be tcp://HOST:PORT, got {endpoint!r}")
    if keys is None:
        raise ValueError(f"the cluster endpoint {endpoint} needs CURVE keys: a plaintext socket on a network address "
                         "is refused")  # fmt: skip
    return endpoint


def serve_curve(sock: zmq.Socket, keys: ClusterServerKeys) -> None:
    """Make ``sock`` (not yet bound) a CURVE server with the recorder's secret, its peers checked at ZAP."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret.encode())
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public.encode())
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())


def connect_curve(sock: zmq.Socket, keys: ClusterClientKeys) -> None:
    """Make ``sock`` (not yet connected) a CURVE client of the recorder with this invocation's client pair."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public.encode())
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public.encode())
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret.encode())


def start_authenticator(ctx: zmq.Context, keys: ClusterServerKeys) -> zmq.auth.thread.ThreadAuthenticator:
    """ZAP for ``ctx``: a CURVE peer is let in only with one of ``keys.clients`` (stop it with ``.stop()``)."""
    allowed = {key.encode() for key in keys.clients}

    class InvocationKeys:
        def callback(self, domain: str, key: bytes) -> bool:  # ThreadAuthenticator's credentials provider
            return key in allowed

    auth = zmq.auth.thread.ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=InvocationKeys())
    return auth


def refusals(monitor: zmq.Socket) -> list[str]:
    """The peers turned away since the last call, from ``monitor`` (``sock.get_monitor_socket()``): one reason each
    (:data:`REFUSED_EVENTS`: a plaintext peer fails the handshake, a stranger's key fails authentication)."""
    from zmq.utils.monitor import recv_monitor_message

    reasons = []
    while True:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return reasons
        if event["event"] in REFUSED_EVENTS:
            reasons.append(REFUSED_EVENTS[event["event"]])
