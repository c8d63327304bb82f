"""Instructions during a run: ``python run.py say "TEXT"`` (``orchestration.commands.say``) reaches the running
invocation, which hands the instruction to the trainer of the guided run (it takes effect at that run's next
decision).

The invocation publishes ``<db>.invocation.json`` (its pid, a local control socket, its guided runs) for as
long as it runs; ``run.py say`` reads it, sends a :class:`bus.messages.SayRequest` and prints the answer: how
the instruction was read (its first line, "read as:" or "not understood:"), that the run's controller does not
read instructions when so, that it was given, and which earlier instruction it replaces. The orchestrator serves
the control socket between its other work (:meth:`SteeringService.serve`) and pushes a
:class:`bus.messages.InstructionUpdate` to the trainer's instruction socket; the trainer records the instruction
(``instructions`` table) when it becomes active and again when it first shapes a decision. Under ``--ray`` a
trainer on another node cannot be reached at an ipc path: the service then also binds a ROUTER socket on the
network that speaks only CURVE with the invocation's keys (``bus.curve``, as the recorder's cluster socket), each
Ray arm's trainer connects to it under its run id, and an instruction for that run goes to that name.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import zmq

from agents.expert.embedding import available as embedding_available
from agents.expert.reading import read
from agents.expert.record import reading_record
from bus.curve import HEARTBEATS, ClusterServerKeys, serve_curve, start_authenticator
from bus.discovery import InvocationEndpoint, lookup, publish, withdraw
from bus.messages import (
    BusDecodeError,
    Instruction,
    InstructionUpdate,
    SayReply,
    SayRequest,
    decode,
    encode,
)
from bus.task_spec import TaskSpec
from bus.transport import RequestClient, ipc_endpoint, socket_folder
from orchestration.cli import CliError
from orchestration.cli.schedule import unread_notice
from trainer.config import TrainerConfig

# How long ``run.py say`` waits for the invocation's answer. The orchestrator answers between its other steps, and one
# of them (the first reading of a task's knob descriptions, when its first guided trainer starts) took over 5 s on 2
# cores loaded by a second job: a say sent just then was told the run "did not answer" (CI, 2026-12-07).
SAY_TIMEOUT_MS = 30_000


@dataclass
class TrainerLink:
    """Where instructions for one running trainer go: its own PUSH socket (a local trainer), or the network ROUTER
    it is connected to under ``routing_id`` (a Ray arm's)."""

    socket: zmq.Socket
    routing_id: bytes | None = None

    def send(self, frames: list[bytes]) -> None:
        """Send one message; zmq.ZMQError when a Ray arm's trainer is not connected (yet, or any more)."""
        if self.routing_id is None:
            self.socket.send_multipart(frames)
        else:  # ROUTER_MANDATORY: an unknown name raises instead of dropping the message
            self.socket.send_multipart([self.routing_id, *frames], zmq.NOBLOCK)

    def close(self) -> None:
        if self.routing_id is None:
            self.socket.close()


@dataclass
class ClusterSteering:
    """The network side of instructions under ``--ray``: the invocation's CURVE server keys (the recorder's
    cluster keys) and the host Ray arms reach this node at."""

    keys: ClusterServerKeys
    host: str


class SteeringService:
    """The orchestrator's end: a REP socket for ``run.py say`` and a link to each trainer of a guided run
    (:class:`TrainerLink`). ``running`` is the guided run whose trainer runs now (None between arms); with
    ``cluster``, :attr:`cluster_endpoint` is the ``tcp://`` socket Ray arms' trainers connect to."""

    def __init__(self, ctx: zmq.Context, db: Path, run_dir: Path, guided_runs: list[str], log,
                 cluster: ClusterSteering | None = None):  # fmt: skip
        self.ctx, self.db, self.log, self.run_dir = ctx, db.resolve(), log, run_dir
        self.guided_runs = list(guided_runs)
        self.endpoint = ipc_endpoint(socket_folder(run_dir), "control")
        self.socket = ctx.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.cluster_socket = self.authenticator = self.cluster_endpoint = None
        self.trainers: dict[str, TrainerLink] = {}
        self.tasks: dict[str, TaskSpec] = {}  # what each trainer trains: what a ``say`` is read for
        self.said: dict[str, Instruction] = {}  # the last instruction said to each running trainer (not withdrawn)
        self.controllers: dict[str, tuple[str, bool]] = {}  # run -> its controller, and whether it reads instructions
        self.running: str | None = None
        self.reader_ready = False
        try:  # a failure or Ctrl-C half-way must not leave a socket open: the context could never terminate
            self.socket.bind(self.endpoint)
            # The reader's sentence embedding loads on first use (seconds on 2 cores): before the invocation is
            # published, so that no ``run.py say`` waits for it (SAY_TIMEOUT_MS).
            embedding_available()
            if cluster is not None:
                self.bind_cluster(cluster)
            info = InvocationEndpoint(pid=os.getpid(), db_path=str(self.db), control_endpoint=self.endpoint,
                                      guided_runs=self.guided_runs, started_at=time.time())  # fmt: skip
            publish(info)
        except BaseException:
            self.close_sockets()
            raise

    def bind_cluster(self, cluster: ClusterSteering) -> None:
        """The network ROUTER Ray arms' trainers connect to: CURVE with the invocation's keys (ZAP), a name taken back
        by a retried arm (handover), an unknown or vanished name an error rather than a dropped message (mandatory,
        heartbeats: a peer silent for HEARTBEAT_TIMEOUT is dropped)."""
        self.authenticator = start_authenticator(self.ctx, cluster.keys)
        self.cluster_socket = self.ctx.socket(zmq.ROUTER)
        for option, value in ((zmq.LINGER, 0), (zmq.ROUTER_MANDATORY, 1), (zmq.ROUTER_HANDOVER, 1),
                              *HEARTBEATS):  # fmt: skip
            self.cluster_socket.setsockopt(option, value)
        serve_curve(self.cluster_socket, cluster.keys)
        port = self.cluster_socket.bind_to_random_port("tcp://0.0.0.0")
        self.cluster_endpoint = f"tcp://{cluster.host}:{port}"

    def close_sockets(self) -> None:
        self.socket.close()
        if self.cluster_socket is not None:
            self.cluster_socket.close()
        if self.authenticator is not None:
            self.authenticator.stop()  # its thread holds a socket of the context

    def trainer_started(self, run_id: str, instruction_endpoint: str, task: TaskSpec,
                        controller: tuple[str, bool] | None = None) -> None:  # fmt: skip
        """Connect to the trainer of guided run ``run_id`` (which trains ``task``; ``controller``: its controller and
        whether that reads instructions, else read from its config file); a ``say`` for it goes there from now on,
        and is read back for that task."""
        if not self.reader_ready:
            # The reader encodes the task's knob descriptions on its first reading for the task: here, not while a
            # say waits for its reply.
            read("lower the learning rate", task)
            self.reader_ready = True
        if instruction_endpoint == self.cluster_endpoint:  # a Ray arm: it connects to us under its run id
            self.trainers[run_id] = TrainerLink(self.cluster_socket, run_id.encode())
        else:
            push = self.ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 1000)
            push.connect(instruction_endpoint)
            self.trainers[run_id] = TrainerLink(push)
        self.tasks[run_id] = task
        if controller is not None:
            self.controllers[run_id] = controller
        self.running = run_id

    def trainer_stopped(self, run_id: str) -> None:
        link = self.trainers.pop(run_id, None)
        for known in (self.tasks, self.said, self.controllers):
            known.pop(run_id, None)
        if link is not None:
            link.close()
        if self.running == run_id:
            self.running = next(reversed(self.trainers), None)  # another guided run still training, if any

    def serve(self) -> None:
        """Answer every ``say`` waiting now (never blocks)."""
        while self.socket.poll(0, zmq.POLLIN):
            try:
                request = decode(self.socket.recv_multipart())
            except BusDecodeError as exc:
                self.socket.send_multipart(encode(SayReply(ok=False, detail=exc.reason)))
                continue
            if not isinstance(request, SayRequest):
                self.socket.send_multipart(encode(SayReply(ok=False, detail=f"not a say request: {request.TOPIC}")))
                continue
            self.socket.send_multipart(encode(self.deliver(request)))

    def deliver(self, request: SayRequest) -> SayReply:
        """Push the instruction to the run's trainer, or say why not."""
        run_id = request.run_id or self.running
        if run_id is None:
            return SayReply(ok=False, detail="no guided run is training now; give --run RUN_ID of a running one")
        if request.run_id is None and len(self.trainers) > 1:  # --jobs: which one is meant cannot be guessed
            return SayReply(ok=False, detail=f"{len(self.trainers)} guided runs are training now: give --run with one "
                                             f"of {', '.join(self.trainers)}")  # fmt: skip
        if run_id not in self.trainers:
            known = ", ".join(self.guided_runs) or "none"
            return SayReply(ok=False, run_id=run_id, detail=f"run {run_id!r} is not training now (guided runs: {known})")
        instruction, task = None, self.tasks[run_id]
        if request.text is not None:
            reading = read(request.text, task)
            instruction = Instruction(instruction_id=f"{run_id}-say-{uuid.uuid4().hex[:8]}", text=request.text,
                                      source="say", received_at=time.time(),
                                      reading=reading_record(reading, task))  # fmt: skip
        link = self.trainers[run_id]
        try:
            link.send(encode(InstructionUpdate(run_id=run_id, instruction=instruction)))
        except zmq.ZMQError:
            if link.routing_id is None:
                raise
            # A Ray arm whose trainer has not connected from its node yet (or whose connection went silent)
            return SayReply(ok=False, run_id=run_id, detail=f"run {run_id} is starting on its Ray node and cannot be "
                                                            "reached yet: say it again in a few seconds")  # fmt: skip
        self.log.info("instruction_said", run_id=run_id, text=request.text)
        earlier = self.said.pop(run_id, None)
        if instruction is None:
            withdrawn = f"instruction {earlier.text!r} (given at {clock(earlier)})" if earlier else "instruction"
            detail = f"run {run_id}: {withdrawn} withdrawn from its next decision"
            return SayReply(ok=True, run_id=run_id, detail=detail)
        self.said[run_id] = instruction
        lines = [instruction.reading.read_as]
        steered_by = self.controller(run_id)
        if reading.understood and steered_by is not None and not steered_by[1]:
            lines.append(unread_notice(steered_by[0]))  # the guard still keeps it from moving against the reading
        effect = ("it applies from its next decision" if reading.understood
                  else "it is recorded, and its next decisions are taken on the evidence alone")  # fmt: skip
        lines.append(f"run {run_id}: instruction given: {request.text!r}; {effect}")
        if earlier is not None:
            lines.append(f"it replaces the instruction {earlier.text!r} given at {clock(earlier)}; if no decision "
                         f"has read that one yet, none will (it is recorded as replaced)")  # fmt: skip
        return SayReply(ok=True, run_id=run_id, detail="\n".join(lines))

    def controller(self, run_id: str) -> tuple[str, bool] | None:
        """Run ``run_id``'s controller and whether it reads instructions, from the config its trainer was started
        with (``<run_dir>/trainer.json``, written by the supervisor before the trainer starts, so there before any
        ``say`` is answered); None when that file cannot be read or is not this run's."""
        if run_id not in self.controllers:
            path = self.run_dir / "trainer.json"
            try:
                cfg = TrainerConfig.model_validate_json(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                self.log.warning("trainer_config_unreadable", run_id=run_id, path=str(path), error=str(exc)[:200])
                return None
            if cfg.run_id != run_id:
                return None
            self.controllers[run_id] = (cfg.controller, cfg.instructions_read)
        return self.controllers[run_id]

    def close(self) -> None:
        for run_id in list(self.trainers):
            self.trainer_stopped(run_id)
        self.close_sockets()
        withdraw(InvocationEndpoint, self.db, os.getpid())


def clock(instruction: Instruction) -> str:
    """When ``instruction`` was received, ``HH:MM:SS`` local time (the user's terminal clock)."""
    return time.strftime("%H:%M:%S", time.localtime(instruction.received_at))


def send_say(db: Path, request: SayRequest) -> SayReply:
    """Send ``request`` to the invocation running on ``db``; CliError (one line) when none answers: no
    ``<db>.invocation.json``, one whose process has exited (noticed from its pid, at once), or no reply."""
    found = lookup(InvocationEndpoint, db)
    if found.live is None:
        raise CliError(f"no run is going on {db} ({found.why_not()})")
    info = found.live
    ctx = zmq.Context()
    client = RequestClient(ctx, info.control_endpoint, timeout_ms=SAY_TIMEOUT_MS, retries=0)
    try:
        outcome = client.request(request)
    finally:
        client.close()
        ctx.term()
    if not isinstance(outcome.reply, SayReply):
        raise CliError(f"the run on {db} (pid {info.pid}) did not answer: {outcome.error or outcome.reply}")
    return outcome.reply
