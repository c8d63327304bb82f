"""Arms on a Ray cluster (``--ray auto|ADDRESS``, issue 20): ``python run.py`` stays the driver, with the one recorder
and database; each arm — its trainer, and its agent where the controller needs one — runs as a Ray task placed by
Ray (``--ray-cpus`` / ``--ray-gpus`` per arm), on whichever node has the resources.

Inside the task (:func:`train_arm`) the arm's agent and trainer are the same processes as locally (``python -m
agents``, ``python -m trainer``), in a run directory of the node (their ipc sockets are the node's), with the
driver's checkpoint folder when the node sees it (shared storage) and a folder of the node otherwise. Their records
reach the driver's recorder over TCP on its cluster socket, authenticated and encrypted with ZeroMQ CURVE under
keys made for this invocation (``bus.curve``; the client keys travel to the task as an environment variable of
its processes, never into a configuration stored in the database). Exactly-once delivery is the recorder's as
always: every record numbered per sender and acknowledged after its commit.

A worker that dies mid-arm (killed, out of memory, its node lost): Ray runs the task again (:data:`RAY_RETRIES`),
and the arm continues from its last checkpoint when the checkpoint folder is storage the new node sees (the driver's
run folder on shared storage; on one machine, always), else starts over; the trainer's ``resumed`` or second
``training_started`` event records which. Nothing is doubled: a checkpoint is written before its epoch's records
are sent, and a record sent again is stored once.

Model calls go to ``--llm-base-url`` (a shared OpenAI-compatible endpoint, e.g. vLLM serving the cluster) when
given; with the embedded model, each node runs one model server (:class:`NodeModelServer`, a Ray actor named after
the node, started by the first arm that needs it there and shared by the node's later arms; it ends with the
invocation), which the arm's agent calls on loopback.

Instructions said during the run (``run.py say``) reach a Ray arm's trainer through the driver's network steering
socket (``orchestration.steering``: CURVE, the trainer connects to it under its run id). ``--replay`` and
``--resume`` run on the driver's machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from agents.config import AgentConfig
from bus.curve import CURVE_ENV, ClusterClientKeys
from bus.transport import ipc_endpoint, socket_folder, socket_name
from orchestration.supervisor import ChildExit
from trainer.config import TrainerConfig

AGENT_START_S = 120.0  # an agent on a loaded node: imports, the graph, the embedding
RAY_RETRIES = 2  # times Ray runs an arm again after its worker died
MODEL_SERVER_PREFIX = "reflectnet-llm-"  # + node id: that node's NodeModelServer actor


def connect(address: str, namespace: str) -> None:
    """Join the Ray cluster at ``address`` (``auto``: the one ``ray start`` runs on this machine, else a local one
    started for this invocation) in ``namespace`` (this invocation's: its node model servers are named in it).
    Raises ``ConnectionError`` / ``RuntimeError`` from Ray with its reason."""
    import ray

    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, log_to_driver=True, namespace=namespace,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})  # fmt: skip


def node_address() -> str:
    """This node's address as the cluster's other nodes reach it (Ray's own answer)."""
    import ray

    return ray.util.get_node_ip_address()


def localized(trainer: TrainerConfig, agent: AgentConfig | None, run_dir: Path):
    """The arm's configs with their local paths on this node: run directory, sockets, and the checkpoint folder
    kept where the driver put it only when this node can write there (shared storage); the instruction endpoint
    kept when it is the driver's network steering socket."""
    sockets = socket_folder(run_dir)
    checkpoints = trainer.checkpoint_dir
    if checkpoints is None or not _writable(checkpoints):
        checkpoints = run_dir / "checkpoints"
    if agent is not None:
        name = socket_name("agent", agent.controller)
        agent = agent.model_copy(update={"endpoint": ipc_endpoint(sockets, name), "run_dir": run_dir,
                                         "health_endpoint": ipc_endpoint(sockets, f"{name}-health")})  # fmt: skip
    trainer = trainer.model_copy(update={
        "run_dir": run_dir, "checkpoint_dir": checkpoints,
        # run.py say reaches a Ray arm at the driver's tcp steering socket (CURVE); an ipc path is the driver's own.
        "instruction_endpoint": trainer.instruction_endpoint if is_tcp(trainer.instruction_endpoint) else None,
        "agent_endpoint": agent.endpoint if agent else None, "agent_health_endpoint": agent.health_endpoint if agent
        else None,
    })  # fmt: skip
    return trainer, agent


def is_tcp(endpoint: str | None) -> bool:
    return endpoint is not None and endpoint.startswith("tcp://")


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return os.access(folder, os.W_OK)
    except OSError:
        return False


class NodeModelServer:
    """The embedded model server of one node (a Ray actor pinned there): started once, its loopback URL for every arm
    of the node. Raises ``model_server.manager.LLMServerError`` when it does not come up."""

    def __init__(self):
        from model_server.manager import LocalLLMServer

        log = Path(tempfile.mkdtemp(prefix="reflectnet-llm-")) / "llm-server.log"
        self.server = LocalLLMServer(log)
        self.server.start()
        self.server.wait_ready()

    def base_url(self) -> str:
        return self.server.base_url

    # No __del__: Ray copies a class's attributes onto its ActorClass handle, whose collection then ran it on an
    # object without ``server`` (an ignored AttributeError in every arm's output). The server process needs no
    # stopping here: it watches its parent (model_server/serve.py) and exits when the actor is killed.


def node_model_url() -> str:
    """The loopback URL of this node's embedded model server, started here by the first arm that asks."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    # Detached: the arm that starts it ends long before the node's last arm; the driver removes it at the end
    # (RayArms.close).
    actor = ray.remote(NodeModelServer).options(
        name=f"{MODEL_SERVER_PREFIX}{node}", get_if_exists=True, num_cpus=0, lifetime="detached",
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
    ).remote()  # fmt: skip
    return ray.get(actor.base_url.remote())


def train_arm(trainer: TrainerConfig, agent: AgentConfig | None, keys: ClusterClientKeys) -> int:
    """One arm on this node (the body of the Ray task): its agent, then its trainer to the end; the trainer's exit
    code (``bus.child``). Both send their records to the recorder's cluster socket under ``keys``."""
    from bus.messages import Hello, Ready
    from bus.transport import RequestClient

    import zmq

    run_dir = Path(tempfile.mkdtemp(prefix=f"reflectnet-{trainer.run_id}-"))
    trainer, agent = localized(trainer, agent, run_dir)
    if agent is not None and agent.llm is not None and agent.llm.provider == "local":
        agent = agent.model_copy(update={"llm": agent.llm.model_copy(update={"base_url": node_model_url()})})
    if trainer.resume_from is None and trainer.checkpoint_file.exists():
        # Ray's retry of an arm whose worker died: its checkpoint is on storage this node sees (shared, or the same
        # node), so it continues after the last epoch it completed, as --resume does; records of that epoch and
        # before, sent again from the checkpoint, are stored once. Elsewhere it starts over.
        trainer = trainer.model_copy(update={"resume_from": trainer.checkpoint_file})
    env = {**os.environ, CURVE_ENV: keys.model_dump_json()}
    processes = []
    try:
        if agent is not None:
            (run_dir / "agent.json").write_text(agent.model_dump_json())
            processes.append(subprocess.Popen([sys.executable, "-m", "agents", "--config", str(run_dir / "agent.json")],
                                              env=env, start_new_session=True))  # fmt: skip
            ctx = zmq.Context()
            client = RequestClient(ctx, agent.endpoint, timeout_ms=1000, retries=0)
            deadline = time.monotonic() + AGENT_START_S
            while not isinstance(client.request(Hello(run_id=trainer.run_id, component="ray")).reply, Ready):
                if time.monotonic() > deadline or processes[0].poll() is not None:
                    break  # the trainer falls back, recorded, as with an agent that never answers locally
            client.close()
            ctx.term()
        (run_dir / "trainer.json").write_text(trainer.model_dump_json())
        processes.append(subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(run_dir / "trainer.json")],
                                          env=env, start_new_session=True))  # fmt: skip
        return processes[-1].wait()
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


@dataclass
class RayArms:
    """The driver's side: arms submitted as Ray tasks with ``cpus``/``gpus`` each, awaited like local trainers."""

    keys: ClusterClientKeys
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self):
        import ray

        # max_retries: Ray runs the task again when its worker or node dies (not when the trainer fails: that is
        # the run's own failure, recorded, continued with --resume).
        self._task = ray.remote(train_arm).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=RAY_RETRIES)
        self.refs: dict[str, object] = {}  # child name -> its task's ObjectRef

    def start(self, name: str, trainer: TrainerConfig, agent: AgentConfig | None) -> None:
        self.refs[name] = self._task.remote(trainer, agent, self.keys)

    def wait_any(self, names: list[str], supervise) -> ChildExit:
        """Until one of the tasks ``names`` ends (``supervise()`` in between: the recorder's health, the sender);
        how its trainer ended (a task lost with its node: exit code 1, the run failed)."""
        import ray

        refs = {self.refs[name]: name for name in names}
        while True:
            done, _ = ray.wait(list(refs), num_returns=1, timeout=0.2)
            if done:
                name = refs[done[0]]
                del self.refs[name]
                try:
                    return ChildExit(name, int(ray.get(done[0])))
                except ray.exceptions.RayError:
                    return ChildExit(name, 1)
            supervise()

    def close(self) -> None:
        """Remove the node model servers this invocation started (detached actors of its namespace)."""
        import ray

        for actor in ray.util.list_named_actors(all_namespaces=False):
            if actor.startswith(MODEL_SERVER_PREFIX):
                try:
                    ray.kill(ray.get_actor(actor))
                except ValueError:  # already gone
                    pass

    def stop(self, name: str) -> None:
        """Cancel the task ``name`` (its processes are stopped as the task's worker goes)."""
        import ray

        ref = self.refs.pop(name, None)
        if ref is not None:
            ray.cancel(ref, force=True)
