"""Liveness: a frozen or stuck peer is named within seconds; a starting one is not mistaken for frozen."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from bus.liveness import BusyClock, HealthCheck, HealthResponder, LivenessProbe
from bus.messages import Hello
from bus.transport import RequestClient, free_tcp_endpoint


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.term()


def wait_for(predicate, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def test_busy_clock_counts_only_while_busy():
    clock = BusyClock()
    assert clock.busy_s == 0.0
    with clock.busy():
        time.sleep(0.2)
        assert 0.15 < clock.busy_s < 1.0
    assert clock.busy_s == 0.0


def test_health_check_tells_slow_stuck_and_silent_apart(ctx):
    endpoint, clock = free_tcp_endpoint(), BusyClock()
    responder = HealthResponder(ctx, endpoint, clock).start()
    check = HealthCheck(ctx, endpoint, timeout_ms=500, slack_s=0.2)
    try:
        assert check(waited_s=0.0) is None  # idle
        with clock.busy():
            time.sleep(0.5)
            # Busy as long as this try has waited: still on this request (slow, not stuck); a retry is worth it.
            assert check(waited_s=0.5) is None
            # Busy since before this try was sent: stuck on an earlier request.
            assert check(waited_s=0.1).startswith("busy for 0.") and "since before this request was sent" in check(0.1)
        responder.stop()  # the process froze: nothing answers
        started = time.monotonic()
        assert check(waited_s=0.0).startswith("no answer to a liveness ping")
        assert time.monotonic() - started < 3.0
    finally:
        responder.stop()
        check.close()


def test_the_health_socket_answers_only_ping(ctx):
    endpoint = free_tcp_endpoint()
    responder = HealthResponder(ctx, endpoint, BusyClock()).start()
    client = RequestClient(ctx, endpoint, timeout_ms=1000, retries=0)
    try:
        reply = client.request(Hello(run_id="r", component="intruder")).reply
        assert reply.ok is False and "only ping" in reply.detail
    finally:
        client.close()
        responder.stop()


def test_probe_names_a_frozen_child_after_three_misses_but_not_a_starting_one(ctx):
    endpoint, child = free_tcp_endpoint(), object()
    probe = LivenessProbe(ctx, interval_s=0.1, timeout_s=0.2, misses=3).start()
    try:
        probe.watch("agent", endpoint, child)
        time.sleep(1.0)  # nothing has answered yet: a child still importing its libraries is not hung
        assert probe.hung("agent", child) is None
        responder = HealthResponder(ctx, endpoint, BusyClock()).start()
        assert wait_for(lambda: probe._watched["agent"].answered, 10.0)  # armed by its first answer
        assert probe.hung("agent", child) is None
        responder.stop()
        frozen_at = time.monotonic()
        verdict = wait_for(lambda: probe.hung("agent", child), 10.0)
        assert verdict == "no answer to 3 liveness pings in a row"
        assert time.monotonic() - frozen_at < 5.0  # 3 x (0.1 s interval + 0.2 s timeout), slack for shared CPUs
        assert probe.hung("agent", object()) is None  # the verdict is about that process, not a restarted one
    finally:
        probe.stop()


def test_probe_names_a_child_stuck_on_one_request(ctx):
    endpoint, clock, child = free_tcp_endpoint(), BusyClock(), object()
    responder = HealthResponder(ctx, endpoint, clock).start()
    probe = LivenessProbe(ctx, interval_s=0.1, timeout_s=0.5).start()
    stuck = threading.Event()
    try:
        probe.watch("agent", endpoint, child, busy_limit_s=0.5)

        def deadlocked_node():
            with clock.busy():
                stuck.wait(5.0)

        worker = threading.Thread(target=deadlocked_node)
        worker.start()
        verdict = wait_for(lambda: probe.hung("agent", child), 3.0)
        assert verdict is not None and verdict.startswith("busy on one request for") and "limit 0.5 s" in verdict
        stuck.set()
        worker.join()
        probe.watch("agent", endpoint, child, busy_limit_s=0.5)  # watched afresh, as after a restart
        time.sleep(0.5)
        assert probe.hung("agent", child) is None
    finally:
        probe.stop()
        responder.stop()


def test_a_request_to_a_frozen_peer_is_not_retried_for_a_second_timeout(ctx):
    endpoint = free_tcp_endpoint()
    silent = ctx.socket(zmq.REP)  # bound, receives, never answers: a stopped process
    silent.setsockopt(zmq.LINGER, 0)
    silent.bind(endpoint)
    asked = []

    def unhealthy(waited_s: float):
        asked.append(waited_s)
        return "no answer to a liveness ping"

    frozen = RequestClient(ctx, endpoint, timeout_ms=300, retries=2, health_check=unhealthy)
    healthy = RequestClient(ctx, endpoint, timeout_ms=300, retries=2, health_check=lambda waited_s: None)
    try:
        started = time.monotonic()
        outcome = frozen.request(Hello(run_id="r", component="test"))
        elapsed = time.monotonic() - started
        assert outcome.reply is None and outcome.attempts == 1 and asked == [0.3]  # told how long the try waited
        assert outcome.error == "no reply within 300 ms; not retried: no answer to a liveness ping"
        assert elapsed < 1.5  # one timeout, not three
        # A peer that answers its pings (slow, not frozen) gets every retry.
        assert healthy.request(Hello(run_id="r", component="test")).attempts == 3
    finally:
        frozen.close()
        healthy.close()
        silent.close()
