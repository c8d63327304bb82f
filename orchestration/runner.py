"""The runner: carries out a plan of arms with real processes — the recorder first, the embedded model server
and one agent per controller as needed, then the arms' trainers, ``--jobs`` of them at a time (one agent per
controller serves all its arms; the recorder stays the single writer) — and stops everything in order, whatever
happens (a finished plan, a lost child, Ctrl-C), with every record confirmed by the recorder."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import duckdb

from agents.config import AgentConfig
from agents.controllers import resolve_controller
from agents.config import LLMSettings
from model_server.manager import LLMServerError
from bus.log import configure_logging
from bus.messages import BusDecodeError, ControlRequest, RunFinished, decode
from bus.task_spec import TaskSpec
from bus.transport import RecordSender, RequestClient, free_tcp_endpoint, remove_socket_folder
from orchestration.configs import agent_config, recorder_config, run_started, trainer_config
from orchestration.planning import Arm, prepare_resume
from orchestration.progress import ArmProgress
from orchestration.spec import RunSpec
from orchestration.steering import ClusterSteering, SteeringService
from orchestration.supervisor import (
    AGENT_BUSY_SLACK_S,
    RECORDER_MISSES,
    STARTUP_TIMEOUT_S,
    ChildExit,
    ChildLost,
    ChildSpec,
    Orchestrator,
    start_local_llm,
    wait_for_agent,
    wait_for_recorder,
)
from tasks.registry import task_class
from trainer.checkpoint import CheckpointError, read_state
from trainer.config import TrainerConfig


@dataclass
class LiveArm:
    """An arm whose trainer is running: its trainer's config and the supervisor's name for the trainer process."""

    arm: Arm
    trainer: TrainerConfig
    child: str


class Runner:
    """One invocation's processes. :meth:`run` trains ``todo``, up to ``spec.jobs`` arms at once in plan order, and
    sets each arm's ``status`` and ``exit_code``; ``interrupted`` / ``aborted`` say how it ended if not by finishing
    the plan."""

    def __init__(self, spec: RunSpec, run_dir: Path, settings: LLMSettings | None):
        self.spec, self.run_dir, self.settings = spec, run_dir, settings
        self.orch = Orchestrator(run_dir)
        self.recorder = recorder_config(spec, run_dir)
        self.sender = RecordSender(self.orch.ctx, self.recorder.endpoint)
        self.log = self.orch.log = configure_logging("orchestrator", run_dir / "logs", forward=self.sender.send)
        self.control = RequestClient(self.orch.ctx, self.recorder.control_endpoint, timeout_ms=5000, retries=0)
        self.agents: dict[str, AgentConfig] = {}
        self.steering: SteeringService | None = None
        self.running: dict[str, LiveArm] = {}  # run_id -> the arm training now
        self.progress = ArmProgress() if spec.jobs > 1 and spec.ray is None else None  # several arms: a line each
        self.ray_arms = None  # orchestration.ray_cluster.RayArms under --ray
        self.cluster_steering: ClusterSteering | None = None  # under --ray: say's network socket
        self.interrupted = self.aborted = False

    def run(self, todo: list[Arm]) -> None:
        try:
            discarded = self.start_services(todo)
            waiting = deque(enumerate(todo, 1))
            while waiting or self.running:
                while waiting and len(self.running) < self.spec.jobs:
                    number, arm = waiting.popleft()
                    self.start_arm(arm, todo, f"[{number}/{len(todo)}]", discarded.get(arm.run_id))
                ended = self.wait_any([live.child for live in self.running.values()])
                arm = self.finish_arm(next(live for live in self.running.values() if live.child == ended.name), ended)
                if arm.status == "interrupted":
                    raise KeyboardInterrupt
        except (LLMServerError, ChildLost) as exc:
            self.abort(str(exc))
        except KeyboardInterrupt as stop:
            self.interrupt(str(stop) or "SIGINT")
        finally:
            self.shutdown()

    def wait_any(self, names: list[str]) -> ChildExit:
        """Until one of the live arms' trainers (local processes, or Ray tasks) ends."""
        if self.ray_arms is None:
            return self.orch.wait_any(names, self.sender)
        return self.ray_arms.wait_any(names, lambda: (self.orch.supervise(), self.sender.pump()))

    def start_ray(self) -> None:
        """Join the cluster; give the recorder a cluster socket (CURVE, this invocation's keys) on a free port of
        this node, which the arms' processes on any node send their records to."""
        from bus.curve import new_cluster_keys
        from orchestration.ray_cluster import RayArms, connect, node_address

        connect(self.spec.ray, namespace=f"reflectnet-{self.run_dir.name}")
        server_keys, client_keys = new_cluster_keys()
        port = free_tcp_endpoint().rsplit(":", 1)[1]
        self.recorder = self.recorder.model_copy(update={"cluster_endpoint": f"tcp://0.0.0.0:{port}",
                                                         "cluster_keys": server_keys})  # fmt: skip
        self.cluster_endpoint = f"tcp://{node_address()}:{port}"
        self.cluster_steering = ClusterSteering(server_keys, node_address())  # run.py say to the arms on their nodes
        self.ray_arms = RayArms(client_keys, self.spec.ray_cpus, self.spec.ray_gpus)

    def start_services(self, todo: list[Arm]) -> dict[str, dict[str, int]]:
        """Resumed runs' later rows dropped, the recorder started and answering, the embedded model server
        started when an arm needs it; the rows dropped per resumed run."""
        try:
            discarded = {arm.run_id: prepare_resume(self.spec.db, arm) for arm in todo if arm.resume_from is not None}
        except duckdb.Error as exc:
            raise ChildLost(f"--db {self.spec.db}: cannot prepare the resume: {str(exc).splitlines()[0]}") from None
        if self.spec.ray is not None:
            self.start_ray()
        # The recorder's control socket is served by its main loop: a ping there checks the loop itself.
        recorder = self.orch.spawn(ChildSpec("recorder", "storage", self.recorder, self.recorder.control_endpoint,
                                             misses=RECORDER_MISSES))  # fmt: skip
        if not wait_for_recorder(self.control, recorder):
            raise ChildLost(f"the recorder did not start (exit code {recorder.poll()}); see {self.run_dir / 'logs'}")
        guided = [a.run_id for a in todo if a.name == "guided"]
        if guided:  # run.py say: instructions during the run
            self.steering = SteeringService(self.orch.ctx, self.spec.db, self.run_dir, guided, self.log,
                                            self.cluster_steering)  # fmt: skip
            self.orch.ticks.append(self.steering.serve)
        settings = self.settings
        needs_model = any(a.controller != "none" and resolve_controller(a.controller).uses_llm for a in todo)
        if settings is not None and settings.provider == "local" and needs_model and self.ray_arms is None:
            self.settings = start_local_llm(self.orch, settings, self.log)
        return discarded

    def start_arm(self, arm: Arm, todo: list[Arm], counter: str, discarded: dict | None) -> None:
        """The arm's agent (started on first use), its ``runs`` row, its trainer started (:meth:`finish_arm` when it
        ends). With ``--jobs`` above 1 its trainer is ``trainer-<run_id>`` and gets its share of the cores as torch
        threads (:func:`trainer_threads`)."""
        if self.ray_arms is not None:  # its agent and trainer go to a node together: see start_ray_arm
            return self.start_ray_arm(arm, todo, counter)
        new_agent = arm.controller != "none" and arm.controller not in self.agents
        if new_agent:
            self.agents[arm.controller] = agent_config(self.spec, arm, todo, self.recorder, self.run_dir, self.settings)
        agent = self.agents.get(arm.controller)
        trainer = trainer_config(self.spec, arm, self.run_dir, self.recorder, agent)
        if self.spec.jobs > 1:
            # The arms of one controller share its agent, which answers one request at a time: a try waits for the
            # requests queued before it too, so that a queue is not taken for a hung agent (and --jobs 1's epochs kept).
            sharing = min(self.spec.jobs, sum(a.controller == arm.controller for a in todo))
            trainer = trainer.model_copy(update={"threads": trainer_threads(self.spec.jobs),
                                                 "agent_timeout_ms": trainer.agent_timeout_ms * sharing})  # fmt: skip
        arm.checkpoint = trainer.checkpoint_file
        declared = task_class(trainer.task, trainer.task_options)
        print(f"{counter} {declared.name} | regime {arm.regime} ({declared.regimes[arm.regime]} {declared.budget_unit}) "
              f"| seed {arm.seed} | {arm.name} | controller {arm.controller}", flush=True)  # fmt: skip
        if arm.resume_from is None:
            self.sender.send(run_started(arm, trainer, agent, self.settings, self.spec))
        else:
            self.log.info("run_resumed", run_id=arm.run_id, from_epoch=arm.resume_epoch,
                          checkpoint=str(arm.resume_from), discarded_rows=discarded)  # fmt: skip
        # The recorder refuses records of a run it does not know: it must hold the run before anyone logs for it.
        if not self.orch.settle(self.sender, STARTUP_TIMEOUT_S):
            raise ChildLost(f"the recorder did not confirm the start of run {arm.run_id}")
        if new_agent:
            # Stuck on one request past the trainer's timeout (+ slack for a slow final token): restart it.
            busy_limit_s = trainer.agent_timeout_ms / 1000 + AGENT_BUSY_SLACK_S
            self.orch.spawn(ChildSpec(f"agent-{arm.controller}", "agents", agent, agent.health_endpoint, busy_limit_s))
        self.log.info("arm_started", run_id=arm.run_id, arm=arm.name, controller=arm.controller)
        live = self.running[arm.run_id] = LiveArm(arm, trainer, "trainer" if self.spec.jobs == 1 else f"trainer-{arm.run_id}")
        self.serve_instructions(arm, trainer, declared.spec())
        proc = self.orch.spawn(ChildSpec(live.child, "trainer", trainer, restart=False,
                                         capture_output=self.progress is not None))  # fmt: skip
        if self.progress is not None:
            self.progress.follow(arm.run_id, proc.stdout)
        if new_agent:
            # The agent starts (imports, the model's warm-up) while the trainer starts (data, model, compile): its
            # first request waits at most for the rest, queued, not for both in turn (seconds per guided arm).
            wait_for_agent(self.orch, agent, arm.run_id, self.sender)

    def start_ray_arm(self, arm: Arm, todo: list[Arm], counter: str) -> None:
        """The arm as a Ray task: its ``runs`` row from here, its agent (one of its own) and trainer on a node,
        sending their records to the recorder's cluster socket."""
        cluster = self.recorder.model_copy(update={"endpoint": self.cluster_endpoint})
        agent = None
        if arm.controller != "none":
            agent = agent_config(self.spec, arm, [arm], cluster, self.run_dir, self.settings)
        trainer = trainer_config(self.spec, arm, self.run_dir, cluster, agent)
        if self.steering is not None and trainer.instruction_endpoint is not None:  # say reaches it over the network
            trainer = trainer.model_copy(update={"instruction_endpoint": self.steering.cluster_endpoint})
        arm.checkpoint = trainer.checkpoint_file
        print(f"{counter} regime {arm.regime} | seed {arm.seed} | {arm.name} | controller {arm.controller} | on Ray",
              flush=True)  # fmt: skip
        self.sender.send(run_started(arm, trainer, agent, self.settings, self.spec))
        if not self.orch.settle(self.sender, STARTUP_TIMEOUT_S):
            raise ChildLost(f"the recorder did not confirm the start of run {arm.run_id}")
        self.log.info("arm_started", run_id=arm.run_id, arm=arm.name, controller=arm.controller, ray=True)
        live = self.running[arm.run_id] = LiveArm(arm, trainer, f"trainer-{arm.run_id}")
        self.serve_instructions(arm, trainer, task_class(trainer.task, trainer.task_options).spec())
        self.ray_arms.start(live.child, trainer, agent)

    def serve_instructions(self, arm: Arm, trainer: TrainerConfig, task: TaskSpec) -> None:
        """Let ``run.py say`` reach the trainer of a guided arm (one with an instruction endpoint), read for ``task``."""
        if self.steering is not None and trainer.instruction_endpoint is not None:
            self.steering.trainer_started(arm.run_id, trainer.instruction_endpoint, task,
                                          (trainer.controller, trainer.instructions_read))  # fmt: skip

    def finish_arm(self, live: LiveArm, ended: ChildExit) -> Arm:
        """After ``live``'s trainer exited: its checkpointed records kept, its ``runs`` row finished."""
        arm = live.arm
        del self.running[arm.run_id]
        if self.progress is not None:
            self.progress.done(arm.run_id)
        if self.steering is not None:
            self.steering.trainer_stopped(arm.run_id)
        self.orch.stop_child(live.child)
        self.resend_checkpoint_records(live.trainer)
        arm.status, arm.exit_code = ended.status, ended.code
        self.sender.send(RunFinished(run_id=arm.run_id, status=arm.status, finished_at=time.time(), reason=ended.reason))
        self.log.info("arm_finished", run_id=arm.run_id, arm=arm.name, status=arm.status, exit_code=ended.code)
        return arm

    def abort(self, reason: str) -> None:
        """A child the run cannot go on without is lost: the running arm is failed, the rest not run."""
        ignore_stop_signals()
        self.aborted = True
        self.log.error("run_aborted", error=reason)
        print(f"run.py: error: {reason}", file=sys.stderr, flush=True)
        for live in list(self.running.values()):
            self.stop_trainer(live.child)
            live.arm.status = "failed"
            self.sender.send(RunFinished(run_id=live.arm.run_id, status="failed", finished_at=time.time(), reason=reason))
        self.running.clear()

    def interrupt(self, signal_name: str) -> None:
        """Ctrl-C (or SIGTERM/SIGHUP): the trainer stopped, its checkpointed records kept, the arm interrupted."""
        ignore_stop_signals()  # a second Ctrl-C must not abandon the orderly stop that follows
        self.interrupted = True
        print("\ninterrupted: stopping the processes ...", file=sys.stderr, flush=True)
        for live in list(self.running.values()):
            self.stop_trainer(live.child)
        for live in list(self.running.values()):
            self.resend_checkpoint_records(live.trainer)
            live.arm.status = "interrupted"
            self.sender.send(
                RunFinished(run_id=live.arm.run_id, status="interrupted", finished_at=time.time(), reason=signal_name)
            )
        self.running.clear()
        self.log.warning("interrupted")

    def stop_trainer(self, name: str) -> None:
        """Stop a live arm's trainer: the local process, or the Ray task."""
        if self.ray_arms is not None:
            self.ray_arms.stop(name)
        else:
            self.orch.stop_child(name)

    def resend_checkpoint_records(self, trainer: TrainerConfig) -> int:
        """Send again the records a stopped trainer's checkpoint holds unconfirmed; the recorder stores each once."""
        try:
            state = read_state(trainer.checkpoint_file)
        except CheckpointError:
            return 0  # no epoch completed: nothing to keep
        for topic, body in state.pending_records:
            try:
                self.sender.send(decode([topic.encode(), body.encode()]))
            except BusDecodeError as exc:  # a checkpoint from another build: its records cannot be trusted
                self.log.warning("checkpoint_record_skipped", run_id=trainer.run_id, reason=exc.reason)
        if state.pending_records:
            self.log.info("checkpoint_records_replayed", run_id=trainer.run_id, records=len(state.pending_records))
        return len(state.pending_records)

    def shutdown(self) -> None:
        """Agents and the model server stopped, every record confirmed, the recorder's last commit, sockets closed."""
        ignore_stop_signals()
        orch = self.orch
        if self.progress is not None:
            self.progress.close()
        if self.ray_arms is not None:
            self.ray_arms.close()
        for name in [n for n in orch.children if n.startswith("agent")]:
            orch.stop_child(name)
        if orch.probe is not None:
            orch.probe.stop()
        orch.stop_child("llm")
        self.log.info("shutdown", interrupted=self.interrupted, restarts=dict(orch.restarts))
        try:
            settled = orch.settle(self.sender, 30.0) if "recorder" in orch.recipes else self.sender.pending == 0
        except ChildLost:
            settled = False
        if not settled:
            print(f"run.py: {self.sender.pending} record(s) were not confirmed by the recorder", file=sys.stderr)
        self.sender.close(timeout_s=0)
        if "recorder" in orch.children:
            stopped = self.control.request(ControlRequest(op="stop"), timeout_ms=30_000)
            if stopped.reply is None:
                print(f"run.py: the recorder did not confirm its last commit: {stopped.error}", file=sys.stderr)
            orch.stop_child("recorder")
        self.control.close()
        if self.steering is not None:
            self.steering.close()
        if orch.liveness is not None:
            orch.liveness.stop()  # it owns sockets: the context cannot terminate before it
        orch.ctx.term()
        remove_socket_folder(self.run_dir)


def trainer_threads(jobs: int) -> int:
    """Torch threads for each of ``jobs`` trainers running at once: the cores this process may use, shared out
    (at least one each), so that the arms together do not oversubscribe the machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // jobs)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def interrupt_on_stop_signals() -> None:
    """SIGINT explicitly: a process started in the background (`cmd &`, nohup, some CI runners) inherits it as
    ignored, and Python then installs no KeyboardInterrupt handler. SIGTERM/SIGHUP (a scheduler's time limit, a
    closed terminal) stop the run as Ctrl-C does."""

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in STOP_SIGNALS:
        signal.signal(signum, interrupt)
