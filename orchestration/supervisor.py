"""Supervision of the child processes: start, watch (exit codes, liveness pings, the model server's HTTP
probe), restart with a budget, stop in order; and the start-up handshakes with the recorder and agents."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import zmq
from pydantic import BaseModel

from agents.config import AgentConfig
from agents.config import LLMSettings
from model_server.manager import HangProbe, LLMServerError, LocalLLMServer
from bus.liveness import LivenessProbe
from bus.messages import ControlReply, ControlRequest, Hello, Ready
from bus.transport import RecordSender, RequestClient
from bus.child import (
    EXIT_CONFIG_INVALID,
    EXIT_DATA_UNAVAILABLE,
    EXIT_DATABASE_UNUSABLE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TASK_BROKEN,
)

STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
MAX_RESTARTS = 5  # per child and invocation
# A recorder's loop may stall on a DuckDB checkpoint of a large file: about 20 s of silence before it counts as frozen.
RECORDER_MISSES = 10
AGENT_BUSY_SLACK_S = 5.0  # an agent busy this long past the trainer's timeout is stuck (bus.liveness)


@dataclass(frozen=True)
class ChildSpec:
    """How to start and watch one child process: ``python -m <module> --config <run_dir>/<name>.json`` with
    ``config`` written there; with ``health_endpoint`` (a socket answering liveness pings, ``bus.liveness``)
    it is restarted when it misses ``misses`` pings in a row or stays busy on one request over
    ``busy_limit_s``. ``restart``: restarted when it exits (services); the trainer is not (a crashed run is
    ``failed`` and continues with ``--resume``)."""

    name: str
    module: str
    config: BaseModel
    health_endpoint: str | None = None
    busy_limit_s: float | None = None
    misses: int | None = None
    restart: bool = True
    capture_output: bool = False  # its stdout a pipe for the orchestrator to read (several arms: their progress)


@dataclass(frozen=True)
class ChildExit:
    """How a child process ended: its exit code (``bus.child``) and what that means for its run."""

    name: str
    code: int

    @property
    def status(self) -> str:
        """The run status this exit gives a trainer: ``completed``, ``interrupted`` or ``failed``."""
        return {EXIT_OK: "completed", EXIT_INTERRUPTED: "interrupted"}.get(self.code, "failed")

    @property
    def reason(self) -> str | None:
        """``runs.status_reason``: None for a completed run."""
        if self.code == EXIT_OK:
            return None
        if self.code == EXIT_DATA_UNAVAILABLE:  # --resume cannot help: the data must be fixed first
            return "data_error: the task's data is unavailable (see the trainer's message)"
        if self.code == EXIT_TASK_BROKEN:  # nor here: the task's code must be fixed first
            return "task_error: the task broke its declaration (see the trainer's message)"
        return f"{self.name} exit code {self.code}"


@dataclass
class Orchestrator:
    """Starts, watches, restarts and stops the recorder, agent, model-server and trainer processes.

    The recorder, the agents and the embedded model server are restarted when they die (and the model
    server when it stops answering), up to ``MAX_RESTARTS`` times each; they keep their endpoints, so
    their peers reconnect by themselves. The trainer is not restarted: a crashed run is ``failed`` and
    continues with ``--resume``.
    """

    run_dir: Path
    ctx: zmq.Context = field(default_factory=zmq.Context)
    children: dict[str, subprocess.Popen] = field(default_factory=dict)
    recipes: dict[str, Callable[[], subprocess.Popen]] = field(default_factory=dict)
    restarts: Counter = field(default_factory=Counter)
    log: Any = None
    llm: LocalLLMServer | None = None
    probe: HangProbe | None = None
    liveness: LivenessProbe | None = None
    # name -> (endpoint, busy limit s, misses): how the liveness probe watches that child
    health: dict[str, tuple[str, float | None, int | None]] = field(default_factory=dict)
    # called on every turn of the waiting loops (e.g. answering run.py say); must not block
    ticks: list[Callable[[], None]] = field(default_factory=list)

    def spawn(self, child: ChildSpec) -> subprocess.Popen:
        """Start ``child`` and watch it as its spec says."""
        path = self.run_dir / f"{child.name}.json"
        path.write_text(child.config.model_dump_json(indent=2))
        # Own session: a Ctrl-C in the terminal reaches only run.py, which then stops the children in order.
        cmd = [sys.executable, "-m", child.module, "--config", str(path)]
        stdout = subprocess.PIPE if child.capture_output else None
        self.children[child.name] = subprocess.Popen(cmd, start_new_session=True, stdout=stdout)
        if child.restart:
            self.recipes[child.name] = lambda: subprocess.Popen(cmd, start_new_session=True)
        if child.health_endpoint is not None:
            if self.liveness is None:
                self.liveness = LivenessProbe(self.ctx).start()
            self.health[child.name] = (child.health_endpoint, child.busy_limit_s, child.misses)
            self.liveness.watch(child.name, child.health_endpoint, self.children[child.name], child.busy_limit_s,
                                child.misses)  # fmt: skip
        return self.children[child.name]

    def supervise(self) -> None:
        """Restart every service child that died, and the model server if it stopped answering; run the ticks."""
        for tick in self.ticks:
            tick()
        for name, proc in list(self.children.items()):
            if name not in self.recipes:  # not restarted (the trainer), or no longer
                continue
            code = proc.poll()
            if name == "recorder" and code == EXIT_DATABASE_UNUSABLE:  # a restart would meet the same file
                self.children.pop(name)
                self.recipes.pop(name, None)
                raise ChildLost(f"the recorder cannot use the database (exit code {code}; its reason is printed above)")
            if code == EXIT_CONFIG_INVALID:  # a restart would build the same thing; its peers fall back
                self.children.pop(name)
                self.recipes.pop(name, None)
                self.log.error("child_abandoned", child=name, reason="cannot start from its config", exit_code=code)
                print(f"run.py: {name} cannot start (its reason is printed above); not restarting it", file=sys.stderr)
                continue
            if code is not None:
                self.restart(name, f"exited with code {code}")
            elif name == "llm" and self.probe is not None and self.probe.hung:
                self.restart(name, f"no answer within {self.probe.timeout_s:g} s")
            elif self.liveness is not None and (frozen := self.liveness.hung(name, proc)):
                self.restart(name, frozen)

    def restart(self, name: str, reason: str) -> None:
        proc = self.children.get(name)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if self.restarts[name] >= MAX_RESTARTS:
            self.children.pop(name, None)
            self.recipes.pop(name, None)
            self.log.error("child_abandoned", child=name, reason=reason, restarts=self.restarts[name])
            print(f"run.py: {name} {reason}; not restarting it again after {MAX_RESTARTS} restarts", file=sys.stderr)
            if name == "recorder":
                raise ChildLost(f"the recorder {reason} {MAX_RESTARTS + 1} times; see {self.run_dir / 'logs'}")
            return
        self.restarts[name] += 1
        started = time.monotonic()
        try:
            self.children[name] = self.recipes[name]()
        except LLMServerError as exc:  # the model server did not come back: its clients fall back
            self.children.pop(name, None)
            self.log.error("child_restart_failed", child=name, reason=reason, error=str(exc))
            return
        if self.probe is not None and name == "llm":
            self.probe.reset()
        if name in self.health:
            endpoint, busy_limit_s, misses = self.health[name]
            self.liveness.watch(name, endpoint, self.children[name], busy_limit_s, misses)
        self.log.warning(
            "child_restarted", child=name, reason=reason, restart=self.restarts[name],
            pid=self.children[name].pid, restart_s=round(time.monotonic() - started, 2),
        )  # fmt: skip
        print(f"run.py: {name} {reason}; restarted it ({self.restarts[name]}/{MAX_RESTARTS})", file=sys.stderr)

    def settle(self, sender: RecordSender, timeout_s: float) -> bool:
        """Until ``sender``'s records are all acknowledged (restarting a dead recorder); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.supervise()
            if sender.flush(0.2):
                return True
        return False

    def wait(self, name: str, sender: RecordSender) -> ChildExit:
        """Supervise the other children until child ``name`` exits; how it ended."""
        return self.wait_any([name], sender)

    def wait_any(self, names: list[str], sender: RecordSender) -> ChildExit:
        """Supervise the other children until one of the children ``names`` exits (the first in ``names`` when
        several have); how it ended."""
        procs = [(name, self.children[name]) for name in names]
        while True:
            for name, proc in procs:
                if (code := proc.poll()) is not None:
                    return ChildExit(name, code)
            self.supervise()
            sender.pump()
            try:
                procs[0][1].wait(0.2 if len(procs) == 1 else 0.05)
            except subprocess.TimeoutExpired:
                pass

    def stop_child(self, name: str, grace_s: float = STOP_GRACE_S) -> int | None:
        self.recipes.pop(name, None)
        if self.health.pop(name, None) is not None:
            self.liveness.unwatch(name)
        proc = self.children.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


class ChildLost(RuntimeError):
    """A child the run cannot go on without (the recorder) keeps dying."""


def wait_for_agent(orch: Orchestrator, cfg: AgentConfig, run_id: str, sender: RecordSender) -> bool:
    """The agent's start-up handshake, while the first trainer that depends on it starts (a dead agent is restarted
    meanwhile); False, with a warning, when it does not answer within STARTUP_TIMEOUT_S (its trainer falls back)."""
    client = RequestClient(orch.ctx, cfg.endpoint, timeout_ms=1000, retries=0)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            orch.supervise()
            sender.pump()
            outcome = client.request(Hello(run_id=run_id, component="orchestrator"))
            if isinstance(outcome.reply, Ready):
                orch.log.info("agent_ready", controller=cfg.controller, agent_pid=outcome.reply.pid)
                return True
    finally:
        client.close()
    orch.log.warning("agent_not_ready", controller=cfg.controller, waited_s=STARTUP_TIMEOUT_S)
    print(
        f"run.py: the {cfg.controller} agent did not answer within {STARTUP_TIMEOUT_S:g} s; the trainer falls back "
        "to its current hyperparameters until it does",
        file=sys.stderr,
    )
    return False


def start_local_llm(orch: Orchestrator, settings: LLMSettings, log) -> LLMSettings:
    """Start the embedded model server, wait until it answers, and watch it; the settings then point at it."""
    server = orch.llm = LocalLLMServer(orch.run_dir / "logs" / "llm-server.log")
    orch.children["llm"] = server.start()
    started = time.monotonic()
    server.wait_ready()
    orch.recipes["llm"] = server.restart
    orch.probe = HangProbe(server, timeout_s=max(10.0, 1.5 * settings.timeout_s)).start()
    log.info(
        "llm_server_ready",
        base_url=server.base_url,
        model=settings.model,
        server_pid=server.proc.pid,
        startup_s=round(time.monotonic() - started, 2),
    )
    return settings.model_copy(update={"base_url": server.base_url})


def wait_for_recorder(control: RequestClient, recorder: subprocess.Popen) -> bool:
    """The start-up handshake: ping until the recorder answers, it exits, or time runs out."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and recorder.poll() is None:
        outcome = control.request(ControlRequest(op="ping"), timeout_ms=1000)
        if isinstance(outcome.reply, ControlReply) and outcome.reply.ok:
            return True
    return False
