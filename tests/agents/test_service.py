"""The agent as its own process on a real REP socket."""

import subprocess
import sys
import time

import pytest
import zmq

from agents.graph import pipeline_with
from bus.messages import Decision, ErrorReply, Hello, Ready, decode
from bus.transport import RequestClient, free_tcp_endpoint
from tests.helpers import agent_config, make_metrics


def exploding_node(state):
    raise KeyError("budget")


@pytest.fixture
def agent(tmp_path):
    def start(extra_nodes=(), run_ids=None):
        cfg = agent_config(
            endpoint=free_tcp_endpoint(),
            recorder_endpoint=free_tcp_endpoint(),
            run_dir=tmp_path,
            nodes=pipeline_with(list(extra_nodes)),
            run_ids=run_ids,
        )
        path = tmp_path / "agent.json"
        path.write_text(cfg.model_dump_json())
        procs.append(subprocess.Popen([sys.executable, "-m", "agents", "--config", str(path)]))
        client = RequestClient(ctx, cfg.endpoint, timeout_ms=1000, retries=0)
        clients.append(client)
        deadline = time.monotonic() + 30
        while not isinstance(client.request(Hello(run_id="r", component="test")).reply, Ready):
            assert time.monotonic() < deadline
        return client

    ctx, procs, clients = zmq.Context(), [], []
    yield start
    for client in clients:
        client.close()
    for proc in procs:
        proc.terminate()
        proc.wait(10)
    ctx.term()


def test_same_run_and_epoch_asked_twice_gets_the_same_decision(agent, tmp_path):
    client = agent()
    metrics = make_metrics([0.90, 0.93, 0.92, 0.925])
    first = client.request(metrics, timeout_ms=10_000).reply
    second = client.request(metrics, timeout_ms=10_000).reply
    assert isinstance(first, Decision) and first.command.hyperparameters["learning_rate"] == 5e-4
    assert second == first  # identical, latency included: served from the cache, not recomputed
    assert '"duplicate_request"' in next(tmp_path.glob("logs/agent-*.jsonl")).read_text()


def test_garbage_gets_an_error_reply_and_a_failing_node_a_note_not_a_dead_agent(agent, tmp_path):
    client = agent(["tests.agents.test_service:exploding_node"])
    raw = client._socket()
    raw.send_multipart([b"epoch_metrics", b"\x00garbage"])
    assert raw.poll(5000)

    reply = decode(raw.recv_multipart())
    assert isinstance(reply, ErrorReply) and "not JSON" in reply.reason
    # a node that raises after validation costs a note and an event, not the validated command
    reply = client.request(make_metrics([0.8, 0.85]), timeout_ms=10_000).reply
    assert isinstance(reply, Decision) and not reply.fallback and reply.command.hyperparameters["learning_rate"] == 1e-3
    failed = [n for n in reply.notes if n.get("action") == "failed"]
    assert failed == [
        {
            "node": "tests.agents.test_service:exploding_node",
            "action": "failed",
            "error": "KeyError: 'budget'",
            "kept": "the command as it was before this node",
        }
    ]
    assert '"node_failed"' in next(tmp_path.glob("logs/agent-*.jsonl")).read_text()
    assert isinstance(client.request(Hello(run_id="r", component="test")).reply, Ready)


def test_requests_for_a_run_the_agent_does_not_serve_are_refused_with_a_reason(agent):
    client = agent(run_ids=["r"])
    refused = client.request(Hello(run_id="intruder", component="test")).reply
    assert isinstance(refused, ErrorReply) and refused.reason.startswith("unknown run 'intruder'")
    metrics = make_metrics([0.8, 0.85]).model_copy(update={"run_id": "intruder"})
    refused = client.request(metrics, timeout_ms=10_000).reply
    assert isinstance(refused, ErrorReply) and "unknown run" in refused.reason
    served = client.request(make_metrics([0.8, 0.85]).model_copy(update={"run_id": "r"}), timeout_ms=10_000).reply
    assert isinstance(served, Decision) and served.run_id == "r"


def test_a_non_loopback_endpoint_is_refused_unless_allowed(tmp_path):
    common = {"recorder_endpoint": free_tcp_endpoint(), "run_dir": tmp_path}
    with pytest.raises(ValueError, match="not loopback"):
        agent_config(endpoint="tcp://0.0.0.0:5555", **common)
    assert agent_config(endpoint="tcp://0.0.0.0:5555", allow_remote=True, **common).allow_remote
