"""``run.py say``'s reply says what will happen to the instruction (issue 18, must-have 5): how it was read, that a
controller which does not read instructions only guards against it, and which earlier instruction it replaces.
Through the real processes: tests/e2e/test_instructions.py."""

from __future__ import annotations

import time

import pytest
import zmq

from bus.messages import InstructionUpdate, SayRequest, decode
from bus.transport import ipc_endpoint, socket_folder
from orchestration.steering import SteeringService
from tasks.registry import task_class
from tests.helpers import trainer_config


class Log:
    def __init__(self):
        self.events = []

    def __getattr__(self, level):
        return lambda event, **data: self.events.append((level, event, data))


@pytest.fixture
def steering(tmp_path):
    """A steering service whose guided run ``r`` (its trainer.json written as the supervisor writes it) is training,
    and the trainer's end of its instruction socket; ``controller`` is set by ``start``."""
    ctx = zmq.Context()
    services, pulls = [], []

    def start(controller: str):
        run_dir = tmp_path / controller
        run_dir.mkdir()
        cfg = trainer_config(run_id="r", pair_id="p", arm="guided", controller=controller, task="diabetes",
                             regime="50", seed=0, epochs=4, run_dir=run_dir,
                             recorder_endpoint="tcp://127.0.0.1:1")  # fmt: skip
        (run_dir / "trainer.json").write_text(cfg.model_dump_json())
        endpoint = ipc_endpoint(socket_folder(run_dir), "instructions-r")
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.bind(endpoint)
        service = SteeringService(ctx, tmp_path / f"{controller}.duckdb", run_dir, ["r"], Log())
        service.trainer_started("r", endpoint, task_class("diabetes", {}).spec())
        services.append(service)
        pulls.append(pull)
        return service, pull

    yield start
    for service in services:
        service.close()
    for pull in pulls:
        pull.close()
    ctx.term()


def received(pull: zmq.Socket) -> InstructionUpdate:
    assert pull.poll(2000, zmq.POLLIN)
    return decode(pull.recv_multipart())


def test_say_to_a_controller_that_does_not_read_instructions_says_it_only_guards(steering):
    service, pull = steering("heuristic")
    reply = service.deliver(SayRequest(text="lower the learning rate"))
    assert reply.ok and reply.detail.splitlines() == [
        "read as: learning_rate down one step at the next decision, then kept",
        "the heuristic controller does not read instructions: it will only be kept from moving against it",
        "run r: instruction given: 'lower the learning rate'; it applies from its next decision",
    ]
    assert received(pull).instruction.text == "lower the learning rate"
    # Not understood: nothing to guard either, so no promise that it will be.
    unread = service.deliver(SayRequest(text="blorp")).detail.splitlines()
    assert unread[0].startswith("not understood:") and not any("does not read" in line for line in unread)
    # and the reply does not promise that it applies
    assert unread[1] == "run r: instruction given: 'blorp'; it is recorded, and its next decisions are taken on the evidence alone"


def test_say_to_a_controller_that_reads_instructions_has_no_notice(steering):
    service, _ = steering("llm")
    assert service.deliver(SayRequest(text="lower the learning rate")).detail.splitlines() == [
        "read as: learning_rate down one step at the next decision, then kept",
        "run r: instruction given: 'lower the learning rate'; it applies from its next decision",
    ]


def test_a_second_say_says_which_instruction_it_replaces_and_a_clear_which_it_withdraws(steering):
    service, pull = steering("llm")
    first = service.deliver(SayRequest(text="raise dropout"))
    assert "replaces" not in first.detail
    at = time.strftime("%H:%M:%S", time.localtime(received(pull).instruction.received_at))
    second = service.deliver(SayRequest(text="lower dropout")).detail.splitlines()
    assert second[0].startswith("read as: dropout down") and second[-1] == (
        f"it replaces the instruction 'raise dropout' given at {at}; if no decision has read that one yet, none will "
        f"(it is recorded as replaced)"
    )
    at = time.strftime("%H:%M:%S", time.localtime(received(pull).instruction.received_at))
    cleared = service.deliver(SayRequest(text=None))
    assert cleared.detail == f"run r: instruction 'lower dropout' (given at {at}) withdrawn from its next decision"
    assert received(pull).instruction is None
    again = service.deliver(SayRequest(text="raise dropout")).detail
    assert "replaces" not in again  # nothing was in force after the withdrawal
    assert service.deliver(SayRequest(text=None)).detail.startswith("run r: instruction 'raise dropout' (given at ")


def test_a_say_after_the_trainer_stopped_forgets_what_was_said_to_it(steering):
    service, _ = steering("heuristic")
    service.deliver(SayRequest(text="raise dropout"))
    service.trainer_stopped("r")
    assert service.said == {} and service.controllers == {}
    assert service.deliver(SayRequest(text="raise dropout", run_id="r")).detail == (
        "run 'r' is not training now (guided runs: r)"
    )


def test_under_ray_a_say_reaches_a_trainer_connected_over_curve_by_its_run_name_and_no_one_else(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from bus.curve import CURVE_ENV, new_cluster_keys
    from orchestration.steering import ClusterSteering
    from trainer.inbox import InstructionInbox

    server_keys, client_keys = new_cluster_keys()
    _, stranger_keys = new_cluster_keys()
    ctx = zmq.Context()
    service = SteeringService(ctx, tmp_path / "ray.duckdb", tmp_path, ["r"], Log(),
                              ClusterSteering(server_keys, "127.0.0.1"))  # fmt: skip
    trainer_ctx = zmq.Context()
    inboxes = []

    def inbox(keys) -> InstructionInbox:  # a trainer on a node: the keys reach it in its environment
        if keys is None:
            monkeypatch.delenv(CURVE_ENV, raising=False)
        else:
            monkeypatch.setenv(CURVE_ENV, keys.model_dump_json())
        child = SimpleNamespace(ctx=trainer_ctx, on_close=[])
        inboxes.append(child)
        return InstructionInbox(child, service.cluster_endpoint, "r")

    try:
        assert service.cluster_endpoint.startswith("tcp://127.0.0.1:")
        service.trainer_started("r", service.cluster_endpoint, task_class("diabetes", {}).spec(), ("heuristic", False))
        early = service.deliver(SayRequest(text="lower the learning rate"))  # its trainer has not connected yet
        assert not early.ok and "cannot be reached yet" in early.detail
        with pytest.raises(ValueError, match="needs this invocation's CURVE keys"):
            inbox(None)  # a plaintext socket to the network is refused
        stranger = inbox(stranger_keys)
        time.sleep(0.5)
        refused = service.deliver(SayRequest(text="lower the learning rate"))  # a stranger's keys: not connected
        assert not refused.ok and "cannot be reached yet" in refused.detail
        trainer = inbox(client_keys)
        deadline = time.monotonic() + 10
        while not (reply := service.deliver(SayRequest(text="lower the learning rate"))).ok:
            assert time.monotonic() < deadline, reply.detail
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while not (updates := trainer.updates("r", Log())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [u.instruction.text for u in updates] == ["lower the learning rate"]
        assert stranger.updates("r", Log()) == []
    finally:
        for child in inboxes:
            for close in child.on_close:
                close()
        service.close()
        trainer_ctx.term()
        ctx.term()
