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


def test_record_sender_close_does_not_hang_without_a_peer(ctx):
    sender = RecordSender(ctx, free_tcp_endpoint(), linger_ms=300)
    assert sender.send(Hello(run_id="r", component="t"))
    started = time.monotonic()
    sender.close()
    assert time.monotonic() - started < 2.0
    assert sender.send(Hello(run_id="r", component="t")) is False


def test_non_loopback_endpoints_need_explicit_permission():
    assert check_endpoint("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5555"
    with pytest.raises(ValueError, match="not loopback"):
        check_endpoint("tcp://0.0.0.0:5555")
    assert check_endpoint("tcp://0.0.0.0:5555", allow_remote=True)


def test_an_interrupted_request_leaves_the_client_usable(ctx):
    endpoint = free_tcp_endpoint()
    server = ctx.socket(zmq.REP)
    server.setsockopt(zmq.LINGER, 0)
    server.bind(endpoint)
    client = RequestClient(ctx, endpoint, timeout_ms=5000, retries=0)

    class Interrupted(BaseException):
        pass

    sock = client._socket()
    original_poll = sock.poll

    def poll_then_interrupt(*args, **kwargs):
        raise Interrupted()

    sock.poll = poll_then_interrupt
    with pytest.raises(Interrupted):
        client.request(Hello(run_id="r", component="t"))
    assert client._sock is None  # reset: the next request starts on a fresh REQ socket
    del original_poll
    outcome = client.request(Hello(run_id="r", component="t"), timeout_ms=200)
    assert outcome.reply is None and "no reply" in outcome.error  # not zmq's EFSM error
    client.close()
    server.close()
