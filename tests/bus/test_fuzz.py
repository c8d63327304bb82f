"""Property-based fuzzing of every socket: random and malformed frames never crash a component.

``decode`` is fuzzed in-process; then a real recorder process and a real agent process get the same
kind of frames on each of their sockets (records ROUTER, control REP, agent REP). Each frame must be
answered (REP) or dropped (ROUTER) with a recorded reason, and both processes must still serve valid
requests afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import duckdb
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.messages import (
    MESSAGE_TYPES,
    BusDecodeError,
    ControlReply,
    ControlRequest,
    ErrorReply,
    Hello,
    Message,
    Ready,
    decode,
    encode,
)
from bus.transport import RequestClient, free_tcp_endpoint
from storage.recorder import RecorderConfig
from tests.helpers import agent_config

topics = st.sampled_from([t.encode() for t in MESSAGE_TYPES] + [b"", b"nope", b"\xff"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["v", "run_id", "epoch", "op", "component", "x"]), json_values, max_size=5).map(
        lambda d: json.dumps(d).encode()
    ),
)
frame_lists = st.one_of(
    st.lists(st.binary(max_size=64), min_size=1, max_size=5),
    st.tuples(topics, bodies).map(list),
)


@given(frame_lists)
@settings(max_examples=400, deadline=None)
def test_decode_returns_a_message_or_a_reason_and_nothing_else(frames):
    try:
        message = decode(frames)
    except BusDecodeError as exc:
        assert exc.reason
    else:
        assert isinstance(message, Message) and decode(encode(message)) == message


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    recorder = RecorderConfig(
        db_path=tmp / "fuzz.duckdb", endpoint=free_tcp_endpoint(), control_endpoint=free_tcp_endpoint(), run_dir=tmp
    )
    agent = agent_config(
        endpoint=free_tcp_endpoint(), recorder_endpoint=recorder.endpoint, run_dir=tmp, controller="heuristic",
        run_ids=["fuzz-run"],
    )  # fmt: skip
    procs = {}
    for name, module, cfg in (("recorder", "storage", recorder), ("agent", "agents", agent)):
        (tmp / f"{name}.json").write_text(cfg.model_dump_json())
        procs[name] = subprocess.Popen([sys.executable, "-m", module, "--config", str(tmp / f"{name}.json")])
    ctx = zmq.Context()
    control = RequestClient(ctx, recorder.control_endpoint, timeout_ms=1000, retries=0)
    deadline = time.monotonic() + 60
    while not isinstance(control.request(ControlRequest(op="ping")).reply, ControlReply):
        assert time.monotonic() < deadline and procs["recorder"].poll() is None
    hello = RequestClient(ctx, agent.endpoint, timeout_ms=1000, retries=0)
    while not isinstance(hello.request(Hello(run_id="fuzz-run", component="test")).reply, Ready):
        assert time.monotonic() < deadline and procs["agent"].poll() is None
    hello.close()
    yield {"recorder": recorder, "agent": agent, "procs": procs, "ctx": ctx, "control": control, "sent": []}
    control.close()
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
    ctx.term()


def _request(ctx, endpoint: str, frames: list[bytes]) -> list[bytes]:
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        assert sock.poll(10_000), "no answer: the peer is stuck or dead"
        return sock.recv_multipart()
    finally:
        sock.close()


@given(frames=frame_lists)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_agent_answers_any_frames_with_a_reason(services, frames):
    reply = decode(_request(services["ctx"], services["agent"].endpoint, frames))
    if isinstance(reply, ErrorReply):
        assert reply.reason
    else:  # the only valid requests are a Hello for the run it serves
        assert isinstance(reply, Ready) and frames[0] == b"hello"
    assert services["procs"]["agent"].poll() is None


@given(frames=frame_lists)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_recorder_control_socket_answers_any_frames(services, frames):
    reply = decode(_request(services["ctx"], services["recorder"].control_endpoint, frames))
    assert isinstance(reply, ControlReply)
    assert reply.ok == (frames[0] == b"control" and reply.op in ("ping", "sync")) or not reply.ok
    assert services["procs"]["recorder"].poll() is None


@given(frames=frame_lists)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_recorder_drops_any_record_frames_with_a_reason(services, frames):
    sock = services["ctx"].socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(services["recorder"].endpoint)
    sock.send_multipart(frames)
    sock.close()
    services["sent"].append(frames)
    assert services["procs"]["recorder"].poll() is None


def test_after_the_fuzzing_both_still_serve_and_every_bad_frame_was_recorded(services):
    ctx, procs = services["ctx"], services["procs"]
    assert procs["agent"].poll() is None and procs["recorder"].poll() is None
    agent = RequestClient(ctx, services["agent"].endpoint, timeout_ms=5000, retries=0)
    assert isinstance(agent.request(Hello(run_id="fuzz-run", component="test")).reply, Ready)
    agent.close()
    stopped = services["control"].request(ControlRequest(op="stop"), timeout_ms=30_000).reply
    assert isinstance(stopped, ControlReply) and stopped.ok
    procs["agent"].terminate()
    assert procs["recorder"].wait(30) == 0 and procs["agent"].wait(30) == 0
    with duckdb.connect(str(services["recorder"].db_path), read_only=True) as con:
        rejected = con.execute(
            "SELECT count(*) FROM events WHERE component = 'recorder' AND event IN ('bad_frame', 'record_rejected')"
        ).fetchall()[0][0]
        out_of_order = con.execute(
            "SELECT coalesce(sum(CAST(data->>'dropped' AS INTEGER)), 0) FROM events WHERE event = 'out_of_order'"
        ).fetchall()[0][0]
        control_rejected = con.execute("SELECT count(*) FROM events WHERE event = 'bad_control_frame'").fetchall()
        agent_rejected = con.execute(
            "SELECT count(*) FROM events WHERE component = 'agent' AND event IN "
            "('bad_frame', 'request_rejected', 'unexpected_message')"
        ).fetchall()[0][0]
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(0,)]  # no garbage became a run
    # Every frame sent to the records socket is dropped with an event: malformed, a record of an unknown run,
    # or (counted per flush) out of order for its sender.
    assert rejected + out_of_order >= len(services["sent"]) > 0
    assert control_rejected[0][0] > 0 and agent_rejected > 0
