import subprocess
import sys
import threading
import time

import pytest
import zmq

from bus.messages import Hello, Ready, decode, encode
from bus.transport import RecordSender, RequestClient, check_endpoint, free_tcp_endpoint


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.term()


def test_request_client_gives_up_after_timeout_and_retries(ctx):
    endpoint = free_tcp_endpoint()
    silent = ctx.socket(zmq.REP)  # bound, receives, never answers
    silent.setsockopt(zmq.LINGER, 0)
    silent.bind(endpoint)
    client = RequestClient(ctx, endpoint, timeout_ms=200, retries=2)
    started = time.monotonic()
    outcome = client.request(Hello(run_id="r", component="test"))
    elapsed = time.monotonic() - started
    client.close()
    silent.close()
    assert outcome.reply is None and outcome.attempts == 3
    assert "no reply within 200 ms" in outcome.error
    assert 0.55 < elapsed < 2.0


def test_request_client_gets_the_reply_from_a_live_peer(ctx):
    endpoint = free_tcp_endpoint()
    server = ctx.socket(zmq.REP)
    server.setsockopt(zmq.LINGER, 0)
    server.bind(endpoint)

    def answer():
        if server.poll(5000):
            request = decode(server.recv_multipart())
            server.send_multipart(encode(Ready(run_id=request.run_id, component="agent", pid=42)))

    thread = threading.Thread(target=answer)
    thread.start()
    client = RequestClient(ctx, endpoint, timeout_ms=3000, retries=0)
    outcome = client.request(Hello(run_id="abc", component="test"))
    thread.join()
    client.close()
    server.close()
    assert outcome.reply == Ready(run_id="abc", component="agent", pid=42) and outcome.attempts == 1


def test_record_sender_close_does_not_hang_without_a_peer_and_counts_what_was_lost(ctx):
    sender = RecordSender(ctx, free_tcp_endpoint())
    assert sender.send(Hello(run_id="r", component="t"))
    started = time.monotonic()
    assert sender.close(timeout_s=0.3) == 1
    assert time.monotonic() - started < 2.0
    assert not sender.send(Hello(run_id="r", component="t")) and sender.dropped == 2


def test_a_full_outbox_refuses_the_newest_message_and_leaves_no_hole(ctx):
    sender = RecordSender(ctx, free_tcp_endpoint(), max_pending=2)
    assert sender.send(Hello(run_id="a", component="t")) and sender.send(Hello(run_id="b", component="t"))
    assert not sender.send(Hello(run_id="c", component="t"))
    assert [m.run_id for m in sender.unacked()] == ["a", "b"] and sender.dropped == 1
    sender.close(0)


def test_record_sender_resends_until_acknowledged_and_drops_acked_messages(ctx):
    endpoint = free_tcp_endpoint()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    sender = RecordSender(ctx, endpoint, resend_after_s=0.2)
    for i in range(3):
        sender.send(Hello(run_id=f"r{i}", component="t"))
    received = []
    deadline = time.monotonic() + 5
    while len(received) < 6 and time.monotonic() < deadline:  # three messages, then the same three again
        sender.pump()
        if router.poll(50):
            received.append(router.recv_multipart())
    identity = received[0][0]
    assert identity == sender.identity.encode()
    assert [int(f[1]) for f in received] == [1, 2, 3, 1, 2, 3] and sender.resends >= 1
    assert [decode(f[2:]).run_id for f in received[:3]] == ["r0", "r1", "r2"]
    router.send_multipart([identity, b"ack", b"2"])
    deadline = time.monotonic() + 5
    while sender.pending != 1 and time.monotonic() < deadline:
        sender.pump()
        time.sleep(0.01)
    assert [m.run_id for m in sender.unacked()] == ["r2"]
    router.send_multipart([identity, b"ack", b"3"])
    assert sender.flush(5.0) and sender.pending == 0 and sender.close(0) == 0
    router.close()


def test_request_client_notices_a_peer_that_dies_before_the_timeout(ctx):
    endpoint = free_tcp_endpoint()
    code = (
        "import sys, zmq; s = zmq.Context().socket(zmq.REP); s.bind(sys.argv[1]); s.recv_multipart(); "
        "import os; os._exit(9)"
    )
    peer = subprocess.Popen([sys.executable, "-c", code, endpoint])
    client = RequestClient(ctx, endpoint, timeout_ms=30_000, retries=0)
    started = time.monotonic()
    outcome = client.request(Hello(run_id="r", component="test"))
    elapsed = time.monotonic() - started
    client.close()
    peer.wait(10)
    assert outcome.reply is None and outcome.error == "the peer disconnected before replying"
    assert elapsed < 10  # not the 30 s timeout


def test_non_loopback_endpoints_need_explicit_permission():
    assert check_endpoint("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5555"
    with pytest.raises(ValueError, match="not loopback"):
        check_endpoint("tcp://0.0.0.0:5555")
    assert check_endpoint("tcp://0.0.0.0:5555", allow_remote=True)


def test_an_interrupted_request_leaves_the_client_usable(ctx, monkeypatch):
    endpoint = free_tcp_endpoint()
    server = ctx.socket(zmq.REP)
    server.setsockopt(zmq.LINGER, 0)
    server.bind(endpoint)
    client = RequestClient(ctx, endpoint, timeout_ms=5000, retries=0)

    class Interrupted(BaseException):
        pass

    def poll_then_interrupt(*args, **kwargs):
        raise Interrupted()

    with monkeypatch.context() as patch:
        patch.setattr(zmq.Poller, "poll", poll_then_interrupt)
        with pytest.raises(Interrupted):
            client.request(Hello(run_id="r", component="t"))
    assert client._sock is None  # reset: the next request starts on a fresh REQ socket
    outcome = client.request(Hello(run_id="r", component="t"), timeout_ms=200)
    assert outcome.reply is None and "no reply" in outcome.error  # not zmq's EFSM error
    client.close()
    server.close()
