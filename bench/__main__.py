"""ReflectNet benchmark: prints every figure side by side, measured in one run on this machine.

    python -m bench            # full: about 43 minutes on 2 cores (31 of them the three sweeps)
    python -m bench --quick    # fewer repetitions and a 10-epoch end-to-end run

Figures: trainer vs plain eager PyTorch training throughput; validation pass time; agent round trip
over the bus with the heuristic controller; embedded-model decision latency; end-to-end wall time of
``--regime 1pct``, guided arm vs baseline arm, with synchronous and asynchronous decisions (``--decisions async``,
also against a scripted remote endpoint answering in 5 s); an LLM sweep with ``--jobs 2`` against ``--jobs 1``, and
through ``--ray auto`` (a local Ray, when the ``ray`` extra is installed) against local ``--jobs 2``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import structlog

from agents.config import AgentConfig
from agents.graph import pipeline_with
from agents.config import LLMSettings
from model_server.manager import LocalLLMServer
from bench.scripted_endpoint import ScriptedOpenAI, ScriptedReply
from bench.throughput import measure
from bus.messages import Decision, EpochMetrics, EpochSummary, Hello, Ready
from bus.transport import RequestClient, ipc_endpoint, socket_folder
from orchestration.configs import agent_settings, llm_settings, recorder_config
from orchestration.supervisor import ChildSpec, Orchestrator, wait_for_recorder
from orchestration.spec import RunSpec
from tasks.mnist import SPEC as MNIST_SPEC

REPO = Path(__file__).resolve().parents[1]
PARAM_SHAPES = {
    "conv.0.weight": [32, 1, 3, 3], "conv.0.bias": [32], "conv.3.weight": [64, 32, 3, 3], "conv.3.bias": [64],
    "fc.0.weight": [128, 3136], "fc.0.bias": [128], "fc.3.weight": [10, 128], "fc.3.bias": [10],
}  # fmt: skip


def metrics_for(run_id: str, epoch: int, epochs_total: int = 30) -> EpochMetrics:
    """Plausible MNIST 1pct metrics after ``epoch`` (a saturating curve), as the trainer would send them."""
    history = []
    knobs = {"dropout": 0.2, "learning_rate": 1e-3}
    for e in range(1, epoch + 1):
        val = 0.94 - 0.2 * 0.7**e
        train = min(1.0, val + 0.01 * e)
        scores = {"train_loss": 1 - train, "train_acc": train, "val_loss": 1 - val, "val_acc": val}
        history.append(EpochSummary(epoch=e, metrics=scores, hyperparameters=knobs, alpha=0.4))
    last = history[-1]
    return EpochMetrics(
        run_id=run_id, epoch=epoch, epochs_total=epochs_total, task=MNIST_SPEC, regime="1pct", budget=600,
        metrics=last.metrics, vectors={"per_class_val_acc": [last.metrics["val_acc"]] * 10},
        hyperparameters=knobs, alpha=0.4, grad_norms={k: 0.05 for k in PARAM_SHAPES},
        weight_norms={k: 8.0 for k in PARAM_SHAPES}, param_shapes=PARAM_SHAPES, wall_s=2.0, history=history,
    )  # fmt: skip


class Services:
    """A real recorder and agent processes on local sockets, started and stopped as run.py does
    (``orchestration.supervisor``)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.orch = Orchestrator(workdir, log=structlog.get_logger())
        self.ctx = self.orch.ctx
        self.clients: list[RequestClient] = []
        self.recorder = recorder_config(RunSpec(db=workdir / "bench.duckdb"), workdir)
        recorder = self.orch.spawn(ChildSpec("recorder", "storage", self.recorder))
        control = RequestClient(self.ctx, self.recorder.control_endpoint, timeout_ms=1000, retries=0)
        try:
            if not wait_for_recorder(control, recorder):
                raise RuntimeError("recorder did not start")
        finally:
            control.close()

    def agent(self, controller: str, llm: LLMSettings | None = None, command_space: str = "free") -> RequestClient:
        sockets = socket_folder(self.workdir)
        decided = {**agent_settings(RunSpec(pipeline=pipeline_with([])), controller, llm), "command_space": command_space}
        cfg = AgentConfig(endpoint=ipc_endpoint(sockets, f"agent-{controller}"), recorder_endpoint=self.recorder.endpoint,
                          run_dir=self.workdir, **decided)  # fmt: skip
        self.orch.spawn(ChildSpec(f"agent-{controller}", "agents", cfg))
        client = RequestClient(self.ctx, cfg.endpoint, timeout_ms=120_000, retries=0)
        self.clients.append(client)
        if not isinstance(client.request(Hello(run_id="bench", component="bench"), timeout_ms=60_000).reply, Ready):
            raise RuntimeError(f"agent {controller} did not answer the handshake")
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()  # zmq's context.term() waits for every socket to be closed
        for name in reversed(list(self.orch.children)):  # the recorder last: it acknowledges the others' records
            self.orch.stop_child(name)
        self.ctx.term()


def round_trips_ms(client: RequestClient, n: int, run_id: str) -> list[float]:
    times = []
    for i in range(n):
        metrics = metrics_for(run_id, 1 + i % 30)
        metrics = metrics.model_copy(update={"run_id": f"{run_id}-{i // 30}"})  # every request is new work
        started = time.perf_counter()
        reply = client.request(metrics).reply
        times.append((time.perf_counter() - started) * 1000.0)
        if not isinstance(reply, Decision):
            raise RuntimeError(f"agent answered {reply!r}")
    return times


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


REMOTE_DELAY_S = 5.0  # issue 20: a remote model answering each call in 5 s
HOLD = json.dumps({"learning_rate": 0.001, "dropout": 0.2, "alpha": 0.4, "rationale": "keep the settings"})
VERDICT = json.dumps({"verdict": "neutral", "text": "no change"})


def run_seconds(db: Path, workdir: Path, *flags: str) -> float:
    """Wall time (s, start to finish as recorded) of the guided run of ``run.py --regime 1pct *flags``, into ``db``."""
    cmd = [sys.executable, "run.py", "--regime", "1pct", "--db", str(db), "--out", str(workdir / "runs"), *flags]
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT epoch(finished_at - started_at) FROM runs WHERE arm = 'guided' "
                           "ORDER BY started_at DESC LIMIT 1").fetchall()[0][0]  # fmt: skip


def end_to_end(epochs: int, workdir: Path) -> dict[str, float]:
    """``--regime 1pct`` for ``epochs`` epochs: the baseline and the guided arm (embedded model) with synchronous
    decisions, the guided arm again with asynchronous ones, and with asynchronous ones against a scripted endpoint
    answering every call in :data:`REMOTE_DELAY_S` — each guided time over the baseline's."""
    db = workdir / "e2e.duckdb"
    sync_s = run_seconds(db, workdir, "--epochs", str(epochs))
    with duckdb.connect(str(db), read_only=True) as con:
        baseline_s = con.execute("SELECT epoch(finished_at - started_at) FROM runs WHERE arm = 'baseline'").fetchall()[0][0]
    async_s = run_seconds(db, workdir, "--epochs", str(epochs), "--arms", "guided", "--decisions", "async")
    scripts = {"controller": ScriptedReply(HOLD), "judge": ScriptedReply(VERDICT)}
    with ScriptedOpenAI({}, scripts, delay_s=REMOTE_DELAY_S) as remote:
        remote_s = run_seconds(db, workdir, "--epochs", str(epochs), "--arms", "guided", "--decisions", "async",
                               "--llm-base-url", remote.base_url, "--llm-model", "scripted", "--llm-decision", "free",
                               "--llm-command-space", "free")  # fmt: skip
    return {"e2e_epochs": epochs, "e2e_baseline_s": baseline_s, "e2e_guided_s": sync_s, "e2e_ratio": sync_s / baseline_s,
            "e2e_async_s": async_s, "e2e_async_ratio": async_s / baseline_s,
            "e2e_remote_async_s": remote_s, "e2e_remote_async_ratio": remote_s / baseline_s}  # fmt: skip


def sweep_seconds(jobs: int, seeds: int, epochs: int, workdir: Path, ray: bool = False) -> float:
    """Wall time (s) of the sweep ``--regime 100 --seeds SEEDS --controller none,llm --jobs JOBS`` into a database of
    its own, process start-up and model server included; ``ray``: through ``--ray auto`` (a local Ray started by
    the driver, one CPU per arm, the node's embedded model server), Ray's own start-up included."""
    db = workdir / f"sweep-jobs{jobs}{'-ray' if ray else ''}.duckdb"
    cmd = [sys.executable, "run.py", "--regime", "100", "--epochs", str(epochs), "--seeds", str(seeds), "--controller",
           "none,llm", "--jobs", str(jobs), "--db", str(db), "--out", str(workdir / "runs")]  # fmt: skip
    if ray:
        cmd += ["--ray", "auto", "--ray-cpus", "1"]
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def parallel_sweep(seeds: int, epochs: int, workdir: Path) -> dict[str, float]:
    """The LLM sweep of issue 20 with ``--jobs 1``, ``--jobs 2`` and ``--jobs 2`` through a local Ray: wall times,
    jobs 2 / jobs 1 (target <= 0.65) and Ray / jobs 2 (target <= 1.15); no Ray figure without the ``ray`` extra."""
    one = sweep_seconds(1, seeds, epochs, workdir)
    two = sweep_seconds(2, seeds, epochs, workdir)
    figures = {"sweep_seeds": seeds, "sweep_epochs": epochs, "sweep_jobs1_s": one, "sweep_jobs2_s": two,
               "sweep_jobs_ratio": two / one}  # fmt: skip
    if importlib.util.find_spec("ray") is not None:
        ray_s = sweep_seconds(2, seeds, epochs, workdir, ray=True)
        figures |= {"sweep_ray_s": ray_s, "sweep_ray_ratio": ray_s / two}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, 10-epoch end-to-end (default: full)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    figures: dict[str, float] = {"threads": 2, "cpu_count": os.cpu_count() or 0}
    print("training throughput and validation pass ...", flush=True)
    figures |= measure(epochs=2 if args.quick else 4)
    with tempfile.TemporaryDirectory(prefix="reflectnet-bench-") as tmp:
        workdir = Path(tmp)
        services = Services(workdir)
        server = None
        try:
            print("agent round trip (heuristic) ...", flush=True)
            heuristic = services.agent("heuristic")
            round_trips_ms(heuristic, 20, "warm-up")
            trips = round_trips_ms(heuristic, 100 if args.quick else 500, "bench-heuristic")
            figures |= {"agent_rtt_p50_ms": percentile(trips, 50), "agent_rtt_p99_ms": percentile(trips, 99)}
            print("embedded-model decisions ...", flush=True)
            server = LocalLLMServer(workdir / "llm-server.log")
            server.start()
            server.wait_ready()
            # Exactly the settings `python run.py --regime 1pct` uses (timeouts, token caps, command space).
            spec = RunSpec(controllers=["llm"])  # the settings `python run.py` uses by default
            settings = llm_settings(spec).model_copy(update={"base_url": server.base_url})
            llm = services.agent("llm", settings, command_space=spec.llm.resolved_command_space())
            round_trips_ms(llm, 1, "warm-up-llm")
            latencies = [t / 1000.0 for t in round_trips_ms(llm, 10 if args.quick else 30, "bench-llm")]
            figures |= {
                "llm_decision_p50_s": percentile(latencies, 50),
                "llm_decision_p95_s": percentile(latencies, 95),
            }
        finally:
            if server is not None:
                server.stop()
            services.close()
        print("end-to-end --regime 1pct, guided vs baseline ...", flush=True)
        figures |= end_to_end(10 if args.quick else 30, workdir)
        print("sweep --regime 100 --controller none,llm, --jobs 1 vs --jobs 2 vs --ray auto ...", flush=True)
        figures |= parallel_sweep(2 if args.quick else 4, 10 if args.quick else 30, workdir)
    print_figures(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def print_figures(f: dict[str, float]) -> None:
    rows = [
        ("training throughput, plain eager loop", f"{f['train_images_per_s_plain']:.0f} images/s"),
        ("training throughput, ReflectNet trainer", f"{f['train_images_per_s_trainer']:.0f} images/s"),
        ("  trainer / plain (target >= 1.2)", f"{f['train_speedup']:.2f}x"),
        ("validation pass (10,000 images), plain loop", f"{f['eval_s_plain']:.2f} s"),
        ("validation pass, ReflectNet trainer", f"{f['eval_s_trainer']:.2f} s (+{f['eval_compile_warmup_s']:.1f} s compile once per process)"),
        ("  trainer / plain (target <= 0.4)", f"{f['eval_ratio']:.2f}x"),
        ("agent round trip, heuristic, p50 / p99", f"{f['agent_rtt_p50_ms']:.1f} / {f['agent_rtt_p99_ms']:.1f} ms"),
        ("embedded-model decision, p50 / p95", f"{f['llm_decision_p50_s']:.2f} / {f['llm_decision_p95_s']:.2f} s"),
        (f"end-to-end 1pct, {f['e2e_epochs']} epochs: baseline / guided", f"{f['e2e_baseline_s']:.0f} / {f['e2e_guided_s']:.0f} s"),
        ("  guided / baseline, synchronous decisions", f"{f['e2e_ratio']:.2f}x"),
        ("  guided / baseline, --decisions async (target <= 1.10)", f"{f['e2e_async_ratio']:.2f}x"),
        (f"  same, a remote model answering in {REMOTE_DELAY_S:.0f} s (target <= 1.15)", f"{f['e2e_remote_async_ratio']:.2f}x"),
        (f"sweep 100 images, {f['sweep_seeds']} seeds, none+llm, {f['sweep_epochs']} epochs: --jobs 1 / 2",
         f"{f['sweep_jobs1_s']:.0f} / {f['sweep_jobs2_s']:.0f} s"),
        ("  --jobs 2 / --jobs 1 (target <= 0.65)", f"{f['sweep_jobs_ratio']:.2f}x"),
    ]  # fmt: skip
    if "sweep_ray_s" in f:
        rows += [("same sweep, --jobs 2 --ray auto (local Ray)", f"{f['sweep_ray_s']:.0f} s"),
                 ("  --ray auto / local --jobs 2 (target <= 1.15)", f"{f['sweep_ray_ratio']:.2f}x")]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print(f"\nReflectNet benchmark ({f['threads']} torch threads, {f['cpu_count']} cores)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
