"""ReflectNet: train a CNN on MNIST while an agent steers it, everything recorded in DuckDB.

    python run.py --regime 1pct

runs the paper's protocol for one regime: a baseline arm (Adam only) and a guided arm with the same
seed and data subset. The trainer, the agent and the recorder are separate OS processes talking
over ZeroMQ on loopback; this process starts, watches and stops them, and prints the paper's table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import duckdb
import zmq

from agents.config import AgentConfig
from agents.graph import UnknownNodeError, check_pipeline, pipeline_with, resolve_node
from agents.llm import DEFAULT_REMOTE_MODEL, LOCAL_MODEL_NAME, LLMSettings
from agents.llm_server import HangProbe, LLMServerError, LocalLLMServer
from bus.log import configure_logging
from bus.messages import (
    BusDecodeError,
    ControlReply,
    ControlRequest,
    Hello,
    Ready,
    RunFinished,
    RunStarted,
    UpdateCommand,
    decode,
)
from bus.transport import RecordSender, RequestClient, free_tcp_endpoint
from storage.recorder import RecorderConfig
from storage.report import ReportError, run_sql, write_report
from storage.schema import migrate
from trainer.checkpoint import CheckpointError, read_state
from trainer.config import TrainerConfig
from trainer.data import REGIMES, default_data_dir

CONTROLLERS = ("none", "heuristic", "plateau", "llm")
DEFAULTS = {
    "regime": "1pct",
    "controller": "llm",
    "epochs": 30,
    "seed": 0,
    "batch_size": 64,
    "db": Path("runs") / "reflectnet.duckdb",
    "out": Path("runs"),
    "arms": "both",
    "device": "auto",
    "agent_timeout": None,  # derived from the LLM timeouts, see agent_timeout_s()
    "heuristic_agent_timeout": 20.0,
    "llm": "local",
    "llm_timeout": 20.0,
    "llm_max_retries": 0,
    "llm_temperature": 0.2,
    "llm_response_format": "auto",
    "agent_retries": 1,
    "max_repairs": 2,
}
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
MAX_RESTARTS = 5  # per child and invocation


class CliError(Exception):
    """A bad flag value: printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default prints usage first; one clear line is enough
        raise CliError(message)


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type for ``kind`` within [low, high] (``low_open``: strictly above low), saying what was wrong."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun}, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            if high is not None:
                raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], got {value}")
            bound = f"above {low:g}" if low_open else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def _choice_list(choices, everything: str | None = None):
    """An argparse type for a comma list of ``choices`` (or ``everything`` for all of them), in order."""

    def parse(text: str) -> list[str]:
        if everything is not None and text == everything:
            return list(choices)
        items = [item.strip() for item in text.split(",") if item.strip()]
        bad = [item for item in items if item not in choices]
        if bad or not items:
            allowed = ", ".join(choices) + (f", or {everything}" if everything else "")
            raise argparse.ArgumentTypeError(
                f"invalid choice: {', '.join(map(repr, bad)) or repr(text)} (choose from {allowed})"
            )
        return list(dict.fromkeys(items))

    return parse


_positive_int = _number(int, 1)
_non_negative_int = _number(int, 0)
_positive_float = _number(float, 0.0, low_open=True)
_temperature = _number(float, 0.0, 2.0)


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = OneLineParser(
        prog="run.py",
        description="Train the paper's CNN on MNIST with and without an agent steering it; record everything in DuckDB.",
    )
    p.add_argument(
        "--regime",
        type=_choice_list(REGIMES, "all"),
        default=[d["regime"]],
        help=f"training-set size, a comma list, or 'all': {', '.join(f'{k}={v}' for k, v in REGIMES.items())} "
        f"(default: {d['regime']})",
    )
    p.add_argument(
        "--controller",
        type=_choice_list(CONTROLLERS),
        default=[d["controller"]],
        help="who steers the guided arm, or a comma list of them: a language model ('llm'), the rule policy "
        "('heuristic'), torch's ReduceLROnPlateau ('plateau'), or nobody ('none': the baseline arm only) "
        f"(default: {d['controller']})",
    )
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"], help=f"epochs per arm (default: {d['epochs']})")
    p.add_argument(
        "--seed",
        type=_non_negative_int,
        default=d["seed"],
        help=f"seed for data subset, init and batch order (default: {d['seed']})",
    )
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="number of seeds, starting at --seed; every regime x controller runs once per seed (default: 1)",
    )
    p.add_argument(
        "--replay",
        metavar="RUN_ID",
        default=None,
        help="re-run a recorded guided run applying its recorded commands in order, with no model calls, and "
        "compare its epochs with the original (default: none)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        default=None,
        help="continue a failed or interrupted run from its last completed epoch (its checkpoint), with its "
        "recorded settings (default: none)",
    )
    p.add_argument(
        "--rerun",
        action="store_true",
        help="run again what the database already holds as completed with the same settings (default: skip it)",
    )
    p.add_argument("--db", type=Path, default=d["db"], help=f"DuckDB file to record into (default: {d['db']})")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=d["batch_size"],
        help=f"training batch size (default: {d['batch_size']})",
    )
    p.add_argument(
        "--nodes",
        default="",
        help="extra agent nodes, comma-separated, inserted after validation: a built-in ('critic'), an "
        "entry point of group 'reflectnet.nodes', or package.module:function (default: none)",
    )
    p.add_argument(
        "--arms",
        choices=("both", "baseline", "guided"),
        default=d["arms"],
        help=f"which arms of the pair to run (default: {d['arms']})",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=d["device"],
        help=f"torch device for the trainer; auto picks cuda when available (default: {d['device']})",
    )
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="validate with the eager model instead of torch.compile (default: compiled, ~2.7x faster on CPU)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=d["out"],
        help=f"folder for run directories with logs and configs (default: {d['out']})",
    )
    p.add_argument("--data-dir", type=Path, default=None, help=f"MNIST cache folder (default: {default_data_dir()})")
    p.add_argument(
        "--agent-timeout",
        type=_positive_float,
        default=d["agent_timeout"],
        help=f"seconds the trainer waits for the agent per try before retrying (default: "
        f"{d['heuristic_agent_timeout']:g} for heuristic; for llm, enough for every model call of one decision)",
    )
    p.add_argument(
        "--agent-retries",
        type=_non_negative_int,
        default=d["agent_retries"],
        help=f"retries after a timeout before the fallback command (default: {d['agent_retries']})",
    )
    p.add_argument(
        "--max-repairs",
        type=_non_negative_int,
        default=d["max_repairs"],
        help=f"times an invalid answer is sent back for repair before deterministic repair (default: {d['max_repairs']})",
    )
    llm = p.add_argument_group("language model (--controller llm)")
    llm.add_argument(
        "--llm",
        choices=("local", "openai"),
        default=d["llm"],
        help="'local': the embedded SmolLM2-135M served by llama.cpp on loopback, offline; 'openai': an "
        f"OpenAI-compatible endpoint (implied by --llm-base-url) (default: {d['llm']})",
    )
    llm.add_argument(
        "--llm-base-url",
        default=None,
        help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1; the key is "
        "read from OPENAI_API_KEY (default: none)",
    )
    llm.add_argument(
        "--llm-model",
        default=None,
        help=f"model name at the endpoint (default: {LOCAL_MODEL_NAME} for local, {DEFAULT_REMOTE_MODEL} otherwise)",
    )
    llm.add_argument(
        "--llm-timeout",
        type=_positive_float,
        default=d["llm_timeout"],
        help=f"seconds per model call (default: {d['llm_timeout']:g})",
    )
    llm.add_argument(
        "--llm-max-retries",
        type=_non_negative_int,
        default=d["llm_max_retries"],
        help=f"HTTP retries per model call on connection errors and 5xx (default: {d['llm_max_retries']})",
    )
    llm.add_argument(
        "--llm-temperature",
        type=_temperature,
        default=d["llm_temperature"],
        help=f"sampling temperature (default: {d['llm_temperature']})",
    )
    llm.add_argument(
        "--llm-response-format",
        choices=("auto", "json_schema", "json_object", "none"),
        default=d["llm_response_format"],
        help="structured output: OpenAI's json_schema, llama.cpp's json_object with a schema, or none; auto picks "
        f"what the server accepts (default: {d['llm_response_format']})",
    )
    llm.add_argument(
        "--llm-command-space",
        choices=("auto", "grid", "free"),
        default="auto",
        help="'free': any number in the allowed ranges (the paper's form); 'grid': a few choices around the current "
        "values, enforced by the server's schema-constrained decoding; auto: grid for local, free otherwise "
        "(default: auto)",
    )
    llm.add_argument(
        "--no-llm-reflection",
        action="store_true",
        help="judge previous decisions by rule instead of asking the model (default: the model judges)",
    )
    llm.add_argument(
        "--no-reflection-feedback",
        action="store_true",
        help="do not show the verdict on the previous decision in the next prompt, for ablations (default: shown)",
    )
    return p


def llm_settings(args: argparse.Namespace) -> LLMSettings | None:
    if "llm" not in args.controller:
        return None
    remote = args.llm == "openai" or args.llm_base_url is not None
    return LLMSettings(
        provider="openai" if remote else "local",
        base_url=args.llm_base_url or ("https://api.openai.com/v1" if remote else "http://127.0.0.1:0/v1"),
        model=args.llm_model or (DEFAULT_REMOTE_MODEL if remote else LOCAL_MODEL_NAME),
        timeout_s=args.llm_timeout,
        max_retries=args.llm_max_retries,
        temperature=args.llm_temperature,
        response_format=args.llm_response_format,
    )


def command_space(args: argparse.Namespace, settings: LLMSettings | None) -> str:
    if args.llm_command_space != "auto":
        return args.llm_command_space
    return "grid" if settings is not None and settings.provider == "local" else "free"


def agent_timeout_s(args: argparse.Namespace) -> float:
    """Per-try wait of the trainer: the flag, or long enough for every model call of one decision."""
    if args.agent_timeout is not None:
        return args.agent_timeout
    if "llm" not in args.controller:
        return DEFAULTS["heuristic_agent_timeout"]
    calls = (args.max_repairs + 1) * (args.llm_max_retries + 1) + (0 if args.no_llm_reflection else 1)
    return calls * args.llm_timeout + 10.0


@dataclass
class Arm:
    """One training run of the sweep: (regime, seed) x baseline or a guided controller."""

    name: str  # baseline | guided
    controller: str
    regime: str
    seed: int
    pair_id: str
    run_id: str
    fingerprint: str  # what makes two runs the same experiment; a completed one is not run again
    status: str = "pending"
    replay_of: str | None = None  # the recorded run whose commands this one applies again
    recorded: dict | None = None  # replay: the original trainer config and commands; resume: trainer and agent
    resume_from: Path | None = None  # resume: the run's checkpoint
    resume_epoch: int = 0  # resume: the last completed epoch, the one the checkpoint holds


def plan_replay(args: argparse.Namespace) -> Arm:
    """One arm that re-runs the recorded guided run ``args.replay`` with its recorded commands."""
    with duckdb.connect(str(args.db), read_only=True) as con:
        run = con.execute(
            "SELECT arm, regime, seed, pair_id, config FROM runs WHERE run_id = ?", [args.replay]
        ).fetchall()
        decisions = con.execute(
            "SELECT epoch, command FROM decisions WHERE run_id = ? ORDER BY epoch", [args.replay]
        ).fetchall()
    if not run:
        raise CliError(f"--replay: no run {args.replay!r} in {args.db}")
    arm, regime, seed, pair_id, config = run[0]
    if arm != "guided" or not decisions:
        raise CliError(f"--replay: run {args.replay!r} has no recorded decisions to replay (arm {arm})")
    recorded = {"trainer": json.loads(config)["trainer"], "commands": {epoch: json.loads(c) for epoch, c in decisions}}
    run_id = f"{args.replay}-replay-{uuid.uuid4().hex[:6]}"
    return Arm("guided", "replay", regime, seed, pair_id, run_id, uuid.uuid4().hex[:16], replay_of=args.replay,
               recorded=recorded)  # fmt: skip


def plan_resume(args: argparse.Namespace) -> Arm:
    """The recorded run ``args.resume``, to continue from its checkpoint with its recorded settings."""
    with duckdb.connect(str(args.db), read_only=True) as con:
        rows = con.execute(
            "SELECT arm, controller, regime, seed, pair_id, status, config FROM runs WHERE run_id = ?", [args.resume]
        ).fetchall()
    if not rows:
        raise CliError(f"--resume: no run {args.resume!r} in {args.db}")
    arm, controller, regime, seed, pair_id, status, config = rows[0]
    if status == "completed":
        raise CliError(f"--resume: run {args.resume!r} is already completed")
    config = json.loads(config)
    try:
        trainer = TrainerConfig.model_validate(config["trainer"])
    except (KeyError, ValueError) as exc:
        raise CliError(f"--resume: run {args.resume!r} has no usable trainer config: {exc}") from None
    try:
        state = read_state(trainer.checkpoint_file)
    except CheckpointError as exc:
        raise CliError(f"--resume: {exc}; without it run {args.resume!r} can only be run again from epoch 1") from None
    if state.run_id != args.resume:
        raise CliError(f"--resume: {trainer.checkpoint_file} belongs to run {state.run_id!r}")
    return Arm(
        arm, controller, regime, seed, pair_id, args.resume, config.get("fingerprint") or uuid.uuid4().hex[:16],
        replay_of=config.get("replay_of"), recorded={"trainer": config["trainer"], "agent": config.get("agent")},
        resume_from=trainer.checkpoint_file, resume_epoch=state.epoch,
    )  # fmt: skip


def prepare_resume(db: Path, arm: Arm) -> dict[str, int]:
    """Before the recorder opens the database: drop the rows of epochs after the checkpoint (they run
    again, and their decisions may differ) and mark the run running. Returns the rows dropped per table."""
    dropped = {}
    with duckdb.connect(str(db)) as con:
        con.execute("BEGIN TRANSACTION")
        for table in ("epochs", "decisions", "reflections"):
            where = f"FROM {table} WHERE run_id = ? AND epoch > ?"
            dropped[table] = con.execute(f"SELECT count(*) {where}", [arm.run_id, arm.resume_epoch]).fetchall()[0][0]
            con.execute(f"DELETE {where}", [arm.run_id, arm.resume_epoch]).fetchall()
        con.execute(
            "UPDATE runs SET status = 'running', status_reason = ?, finished_at = NULL WHERE run_id = ?",
            [f"resumed after epoch {arm.resume_epoch}", arm.run_id],
        ).fetchall()
        con.execute("COMMIT")
    return dropped


def compare_replay(db: Path, original: str, replay: str) -> str:
    """How closely the replay's epochs match the original's."""
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            """
            SELECT count(*), max(abs(a.val_acc - b.val_acc)), max(abs(a.train_loss - b.train_loss)),
                   max(abs(a.val_loss - b.val_loss)), count(*) FILTER (WHERE a.lr <> b.lr OR a.dropout <> b.dropout)
            FROM epochs a JOIN epochs b ON a.epoch = b.epoch WHERE a.run_id = ? AND b.run_id = ?
            """,
            [original, replay],
        ).fetchall()
    n, d_val_acc, d_train_loss, d_val_loss, hyper = rows[0]
    return (
        f"replay {replay} of {original}: {n} epochs compared; max |delta| val_acc {d_val_acc:.2e}, "
        f"train_loss {d_train_loss:.2e}, val_loss {d_val_loss:.2e}; epochs with other hyperparameters: {hyper}"
    )


def plan_arms(args: argparse.Namespace, pipeline: list[str], settings: LLMSettings | None) -> list[Arm]:
    """Every run the command asks for, baseline first within each (regime, seed) pair."""
    guided = [c for c in args.controller if c != "none"] if args.arms in ("both", "guided") else []
    with_baseline = args.arms in ("both", "baseline") or args.controller == ["none"]
    arms = []
    pairs, taken = recorded_pairs(args.db)
    for regime in args.regime:
        for seed in range(args.seed, args.seed + args.seeds):
            # A pair recorded earlier with the same data and schedule (a sweep extended or resumed) is joined.
            pair_id = pairs.get((regime, seed, args.epochs, args.batch_size)) or uuid.uuid4().hex[:12]
            for name, controller in ([("baseline", "none")] if with_baseline else []) + [("guided", c) for c in guided]:
                experiment = {
                    "regime": regime, "seed": seed, "epochs": args.epochs, "batch_size": args.batch_size,
                    "arm": name, "controller": controller,
                }  # fmt: skip
                if controller != "none":
                    experiment |= {"nodes": pipeline, "max_repairs": args.max_repairs}
                if controller == "llm":
                    experiment |= {
                        "llm_model": settings.model, "llm_provider": settings.provider,
                        "command_space": command_space(args, settings), "temperature": settings.temperature,
                        "llm_reflection": not args.no_llm_reflection, "feed_reflection": not args.no_reflection_feedback,
                    }  # fmt: skip
                fingerprint = hashlib.sha256(json.dumps(experiment, sort_keys=True).encode()).hexdigest()[:16]
                run_id = f"{pair_id}-{name if controller == 'none' else controller}"
                if run_id in taken:  # run again (--rerun, or after a failure): a run id is never reused
                    run_id = f"{run_id}-{uuid.uuid4().hex[:6]}"
                arms.append(Arm(name, controller, regime, seed, pair_id, run_id, fingerprint))
    return arms


def recorded_pairs(db: Path) -> tuple[dict[tuple, str], set[str]]:
    """(regime, seed, epochs, batch size) -> pair_id of the earliest recorded pair, and every run id taken."""
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT regime, seed, epochs, CAST(config->'trainer'->>'batch_size' AS INTEGER), pair_id, run_id FROM runs "
            "WHERE controller <> 'replay' ORDER BY started_at"
        ).fetchall()
    pairs: dict[tuple, str] = {}
    for regime, seed, epochs, batch_size, pair_id, _ in rows:
        pairs.setdefault((regime, seed, epochs, batch_size), pair_id)
    return pairs, {row[5] for row in rows}


def completed_runs(db: Path) -> dict[str, str]:
    """fingerprint -> run_id of every completed run in the database."""
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT config->>'fingerprint', run_id FROM runs WHERE status = 'completed' ORDER BY finished_at"
        ).fetchall()
    return {fingerprint: run_id for fingerprint, run_id in rows if fingerprint}


@dataclass
class Orchestrator:
    """Starts, watches, restarts and stops the recorder, agent, model-server and trainer processes.

    The recorder, the agents and the embedded model server are restarted when they die (and the model
    server when it stops answering), up to ``MAX_RESTARTS`` times each; they keep their endpoints, so
    their peers reconnect by themselves. The trainer is not restarted: a crashed run is ``failed`` and
    continues with ``--resume``.
    """

    args: argparse.Namespace
    run_dir: Path
    ctx: zmq.Context = field(default_factory=zmq.Context)
    children: dict[str, subprocess.Popen] = field(default_factory=dict)
    recipes: dict[str, Callable[[], subprocess.Popen]] = field(default_factory=dict)
    restarts: Counter = field(default_factory=Counter)
    log: Any = None
    llm: LocalLLMServer | None = None
    probe: HangProbe | None = None

    def spawn(self, name: str, module: str, config) -> subprocess.Popen:
        path = self.run_dir / f"{name}.json"
        path.write_text(config.model_dump_json(indent=2))
        # Own session: a Ctrl-C in the terminal reaches only run.py, which then stops the children in order.
        cmd = [sys.executable, "-m", module, "--config", str(path)]
        self.recipes[name] = lambda: subprocess.Popen(cmd, start_new_session=True)
        self.children[name] = self.recipes[name]()
        return self.children[name]

    def supervise(self) -> None:
        """Restart every service child that died, and the model server if it stopped answering."""
        for name, proc in list(self.children.items()):
            if name == "trainer" or name not in self.recipes:
                continue
            code = proc.poll()
            if code is not None:
                self.restart(name, f"exited with code {code}")
            elif name == "llm" and self.probe is not None and self.probe.hung:
                self.restart(name, f"no answer within {self.probe.timeout_s:g} s")

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

    def wait(self, proc: subprocess.Popen, sender: RecordSender) -> int:
        """Supervise the other children until ``proc`` exits; its exit code."""
        while (code := proc.poll()) is None:
            self.supervise()
            sender.pump()
            try:
                proc.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
        return code

    def stop_child(self, name: str, grace_s: float = STOP_GRACE_S) -> int | None:
        self.recipes.pop(name, None)
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


def _utc_now() -> float:
    return time.time()


def preflight_database(db: Path) -> None:
    """Create and migrate the database now, so a bad path fails before any process starts."""
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(db))
    except (OSError, duckdb.Error) as exc:
        raise CliError(f"--db {db}: cannot open for writing: {str(exc).splitlines()[0]}") from None
    try:
        migrate(con)
    except duckdb.Error as exc:
        raise CliError(f"--db {db}: not a usable ReflectNet database: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


def validate_args(args: argparse.Namespace) -> list[str]:
    """Checks argparse cannot do; returns the full node pipeline."""
    extras = [n.strip() for n in args.nodes.split(",") if n.strip()]
    for name in extras:
        try:
            resolve_node(name)
        except UnknownNodeError as exc:
            raise CliError(f"--nodes: {exc}") from None
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CliError("--device cuda: torch.cuda.is_available() is False on this machine")
    if args.llm_base_url is not None and not args.llm_base_url.startswith(("http://", "https://")):
        raise CliError(f"--llm-base-url must start with http:// or https://, got {args.llm_base_url!r}")
    try:
        check_pipeline(pipeline_with(extras))
    except ValueError as exc:
        raise CliError(f"--nodes: {exc}") from None
    if args.resume and args.replay:
        raise CliError("--resume and --replay cannot be combined")
    if args.controller == ["none"] and args.arms == "guided":
        raise CliError("--arms guided needs a controller; --controller none runs the baseline only")
    preflight_database(args.db)
    return pipeline_with(extras)


def print_results(db: Path, run_ids: list[str]) -> None:
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error as exc:
        print(f"cannot read results from {db}: {exc}")
        return
    with con:
        rows = con.execute(
            "SELECT arm, regime, controller, seed, status, epochs_run, final_val_acc, max_val_acc, final_train_acc "
            "FROM run_results WHERE run_id IN (SELECT unnest(?)) ORDER BY n_train DESC, seed, arm, controller",
            [run_ids],
        ).fetchall()
    print()
    print("| Regime | Seed | Model | Controller | Status | Epochs | Final Val Acc | Max Val Acc | Train Acc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm, regime, controller, seed, status, epochs, final_val, max_val, train in rows:
        print(
            f"| {regime} | {seed} | {arm} | {controller} | {status} | {epochs} | {final_val:.4f} | {max_val:.4f} "
            f"| {train:.4f} |"
        )
    print(
        f"\nrecorded in {db}; next: python run.py report --db {db}   or   "
        f'python run.py sql "SELECT * FROM decision_outcomes" --db {db}'
    )


def analysis_main(argv: list[str]) -> int:
    """``run.py report`` and ``run.py sql``: read the database, never write it."""
    parser = OneLineParser(prog=f"run.py {argv[0]}")
    if argv[0] == "sql":
        parser.description = "Answer a SQL query against the database, as a Markdown table."
        parser.add_argument("query", help='e.g. "SELECT * FROM paper_table"')
    else:
        parser.description = "Write the paper's table (Markdown) and figures (PNG) from the database."
        parser.add_argument("--out", type=Path, default=None, help="report folder (default: <db folder>/report)")
    parser.add_argument("--db", type=Path, default=DEFAULTS["db"], help=f"DuckDB file (default: {DEFAULTS['db']})")
    try:
        args = parser.parse_args(argv[1:])
        if argv[0] == "sql":
            print(run_sql(args.db, args.query))
            return 0
        files, notes = write_report(args.db, args.out or args.db.parent / "report")
    except (CliError, ReportError) as exc:
        print(f"run.py {argv[0]}: error: {exc}", file=sys.stderr)
        return 2
    print(files[0].read_text())
    for note in notes:
        print(f"note: {note}")
    print("written:\n" + "\n".join(f"  {path}" for path in files))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("report", "sql"):
        return analysis_main(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        pipeline = validate_args(args)
    except CliError as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2

    # SIGTERM/SIGHUP (a scheduler's time limit, a closed terminal) stop the run as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    settings = llm_settings(args)
    try:
        if args.replay:
            arms, settings = [plan_replay(args)], None
        elif args.resume:
            arms = [plan_resume(args)]
            recorded_agent = arms[0].recorded["agent"]
            settings = (
                LLMSettings.model_validate(recorded_agent["llm"]) if recorded_agent and recorded_agent["llm"] else None
            )
        else:
            arms = plan_arms(args, pipeline, settings)
    except CliError as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    done = {} if args.rerun or args.replay or args.resume else completed_runs(args.db)
    for arm in arms:
        if arm.fingerprint in done:
            arm.run_id, arm.status = done[arm.fingerprint], "completed"
    todo = [arm for arm in arms if arm.status == "pending"]
    regimes = ",".join(dict.fromkeys(a.regime for a in arms))
    if args.resume:
        arm = arms[0]
        print(
            f"ReflectNet | resuming run {arm.run_id} ({arm.name}, controller {arm.controller}, regime {arm.regime}, "
            f"seed {arm.seed}) after epoch {arm.resume_epoch} of {arm.recorded['trainer']['epochs']} | {args.db}",
            flush=True,
        )
    else:
        print(
            f"ReflectNet | regime {regimes} | seeds {args.seed}..{args.seed + args.seeds - 1} | {args.epochs} epochs | "
            f"controller {','.join(args.controller)} | {len(arms)} run(s), {len(arms) - len(todo)} already completed in "
            f"{args.db}",
            flush=True,
        )
    if not todo:
        print_results(args.db, [a.run_id for a in arms])
        return 0

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = args.out / f"{stamp}-{regimes.replace(',', '_')}-{uuid.uuid4().hex[:8]}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"run.py: error: --out {args.out}: cannot create the run directory: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"run directory {run_dir}", flush=True)
    orch = Orchestrator(args, run_dir)
    recorder_cfg = RecorderConfig(
        db_path=args.db.resolve(),
        endpoint=free_tcp_endpoint(),
        control_endpoint=free_tcp_endpoint(),
        run_dir=run_dir.resolve(),
    )
    sender = RecordSender(orch.ctx, recorder_cfg.endpoint)
    log = orch.log = configure_logging("orchestrator", run_dir / "logs", forward=sender.send)
    control = RequestClient(orch.ctx, recorder_cfg.control_endpoint, timeout_ms=5000, retries=0)
    interrupted = failed_to_start = False
    agents: dict[str, AgentConfig] = {}
    running: Arm | None = None
    trainer_cfg: TrainerConfig | None = None
    try:
        try:
            discarded = {arm.run_id: prepare_resume(args.db, arm) for arm in todo if arm.resume_from is not None}
        except duckdb.Error as exc:
            raise ChildLost(f"--db {args.db}: cannot prepare the resume: {str(exc).splitlines()[0]}") from None
        recorder = orch.spawn("recorder", "storage", recorder_cfg)
        if not wait_for_recorder(control, recorder):
            print(
                f"run.py: error: the recorder did not start (exit code {recorder.poll()}); see {run_dir / 'logs'}",
                file=sys.stderr,
            )
            return 1
        if settings is not None and settings.provider == "local" and any(a.controller == "llm" for a in todo):
            settings = start_local_llm(orch, settings, log)
        for number, arm in enumerate(todo, 1):
            agent_cfg = None
            new_agent = arm.controller not in ("none", "replay") and arm.controller not in agents
            if new_agent:
                agents[arm.controller] = agent_config(args, arm, todo, recorder_cfg, run_dir, settings, pipeline)
            if arm.controller not in ("none", "replay"):
                agent_cfg = agents[arm.controller]
            trainer_cfg = trainer_config(args, arm, run_dir, recorder_cfg, agent_cfg)
            print(
                f"[{number}/{len(todo)}] regime {arm.regime} ({REGIMES[arm.regime]} images) | seed {arm.seed} | "
                f"{arm.name} | controller {arm.controller}",
                flush=True,
            )
            if arm.resume_from is None:
                sender.send(run_started(arm, trainer_cfg, agent_cfg, settings, args))
            else:
                log.info(
                    "run_resumed", run_id=arm.run_id, from_epoch=arm.resume_epoch, checkpoint=str(arm.resume_from),
                    discarded_rows=discarded[arm.run_id],
                )  # fmt: skip
            # The recorder refuses records of a run it does not know: it must hold the run before anyone logs for it.
            if not orch.settle(sender, STARTUP_TIMEOUT_S):
                raise ChildLost(f"the recorder did not confirm the start of run {arm.run_id}")
            if new_agent:
                orch.spawn(f"agent-{arm.controller}", "agents", agent_cfg)
                wait_for_agent(orch, agent_cfg, arm.run_id, sender)
            log.info("arm_started", run_id=arm.run_id, arm=arm.name, controller=arm.controller)
            running = arm
            trainer = orch.spawn("trainer", "trainer", trainer_cfg)
            code = orch.wait(trainer, sender)
            running = None
            orch.stop_child("trainer")
            replay_pending_records(trainer_cfg, sender, log)
            arm.status = {0: "completed", 130: "interrupted"}.get(code, "failed")
            sender.send(
                RunFinished(
                    run_id=arm.run_id,
                    status=arm.status,
                    finished_at=_utc_now(),
                    reason=None if code == 0 else f"trainer exit code {code}",
                )
            )
            log.info("arm_finished", run_id=arm.run_id, arm=arm.name, status=arm.status, exit_code=code)
            if arm.status == "interrupted":
                raise KeyboardInterrupt
    except (LLMServerError, ChildLost) as exc:
        _ignore_stop_signals()
        failed_to_start = True
        log.error("run_aborted", error=str(exc))
        print(f"run.py: error: {exc}", file=sys.stderr, flush=True)
        if running is not None:
            orch.stop_child("trainer")
            running.status = "failed"
            sender.send(RunFinished(run_id=running.run_id, status="failed", finished_at=_utc_now(), reason=str(exc)))
    except KeyboardInterrupt as stop:
        _ignore_stop_signals()  # a second Ctrl-C must not abandon the orderly stop that follows
        interrupted = True
        signal_name = str(stop) or "SIGINT"
        print("\ninterrupted: stopping the processes ...", file=sys.stderr, flush=True)
        orch.stop_child("trainer")
        if running is not None:
            replay_pending_records(trainer_cfg, sender, log)
            running.status = "interrupted"
            sender.send(
                RunFinished(run_id=running.run_id, status="interrupted", finished_at=_utc_now(), reason=signal_name)
            )
        log.warning("interrupted")
    finally:
        _ignore_stop_signals()
        for name in [n for n in orch.children if n.startswith("agent")]:
            orch.stop_child(name)
        if orch.probe is not None:
            orch.probe.stop()
        orch.stop_child("llm")
        log.info("shutdown", interrupted=interrupted, restarts=dict(orch.restarts))
        try:
            settled = orch.settle(sender, 30.0) if "recorder" in orch.recipes else sender.pending == 0
        except ChildLost:
            settled = False
        if not settled:
            print(f"run.py: {sender.pending} record(s) were not confirmed by the recorder", file=sys.stderr)
        sender.close(timeout_s=0)
        if "recorder" in orch.children:
            stopped = control.request(ControlRequest(op="stop"), timeout_ms=30_000)
            if stopped.reply is None:
                print(f"run.py: the recorder did not confirm its last commit: {stopped.error}", file=sys.stderr)
            orch.stop_child("recorder")
        control.close()
        orch.ctx.term()
    if any(a.status != "pending" for a in arms):
        print_results(
            args.db, [a.replay_of for a in arms if a.replay_of] + [a.run_id for a in arms if a.status != "pending"]
        )
    for arm in arms:
        if arm.replay_of and arm.status == "completed":
            print(compare_replay(args.db, arm.replay_of, arm.run_id))
        if arm.status in ("failed", "interrupted"):
            print(
                f"resume {arm.run_id} from its last completed epoch: python run.py --resume {arm.run_id} --db {args.db}"
            )
    if interrupted:
        return 130
    if failed_to_start:
        return 1
    return 0 if all(a.status == "completed" for a in arms) else 1


def run_started(arm: Arm, trainer_cfg: TrainerConfig, agent_cfg, settings, args) -> RunStarted:
    return RunStarted(
        run_id=arm.run_id,
        pair_id=arm.pair_id,
        arm=arm.name,
        regime=arm.regime,
        n_train=REGIMES[arm.regime],
        controller=arm.controller,
        llm_model=settings.model if arm.controller == "llm" else None,
        seed=arm.seed,
        epochs=trainer_cfg.epochs,
        started_at=_utc_now(),
        config={
            "fingerprint": arm.fingerprint,
            "replay_of": arm.replay_of,
            "trainer": trainer_cfg.model_dump(mode="json"),
            "agent": agent_cfg.model_dump(mode="json") if agent_cfg else None,
            "cli": {k: str(v) for k, v in vars(args).items()},
        },
    )


def agent_config(args, arm: Arm, todo: list[Arm], recorder_cfg, run_dir: Path, settings, pipeline) -> AgentConfig:
    """The agent for ``arm``'s controller: it serves every run of this invocation with that controller."""
    fresh = {
        "endpoint": free_tcp_endpoint(),
        "recorder_endpoint": recorder_cfg.endpoint,
        "run_dir": run_dir.resolve(),
        "run_ids": [a.run_id for a in todo if a.controller == arm.controller],
    }
    if arm.recorded is not None and arm.recorded.get("agent"):  # a resumed run keeps its agent's settings
        recorded = AgentConfig.model_validate(arm.recorded["agent"])
        llm = settings if recorded.llm is not None else None
        return recorded.model_copy(update={**fresh, "llm": llm})
    return AgentConfig(
        **fresh,
        controller=arm.controller,
        llm=settings if arm.controller == "llm" else None,
        llm_reflection=not args.no_llm_reflection,
        feed_reflection=not args.no_reflection_feedback,
        command_space=command_space(args, settings),
        nodes=pipeline,
        max_repairs=args.max_repairs,
    )


def trainer_config(args, arm: Arm, run_dir: Path, recorder_cfg, agent_cfg) -> TrainerConfig:
    """A new run's trainer from the flags; a replayed or resumed one's from its recorded config."""
    where = {
        "data_dir": (args.data_dir or default_data_dir()).resolve(),
        "run_dir": run_dir.resolve(),
        "recorder_endpoint": recorder_cfg.endpoint,
        "agent_endpoint": agent_cfg.endpoint if agent_cfg else None,
        "device": args.device,
        "compile_eval": not args.no_compile,
    }
    if arm.recorded is None:
        return TrainerConfig(
            run_id=arm.run_id, pair_id=arm.pair_id, arm=arm.name, controller=arm.controller, regime=arm.regime,
            seed=arm.seed, epochs=args.epochs, batch_size=args.batch_size, **where,
            checkpoint_dir=run_dir.resolve() / "checkpoints",
            agent_timeout_ms=int(agent_timeout_s(args) * 1000), agent_retries=args.agent_retries,
        )  # fmt: skip
    original = TrainerConfig.model_validate(arm.recorded["trainer"])
    if arm.resume_from is not None:
        return original.model_copy(
            update={**where, "checkpoint_dir": arm.resume_from.parent, "resume_from": arm.resume_from}
        )
    commands = {int(epoch): UpdateCommand.model_validate(c) for epoch, c in arm.recorded["commands"].items()}
    return original.model_copy(
        update={
            **where, "run_id": arm.run_id, "controller": "replay", "agent_endpoint": None, "replay_commands": commands,
            "checkpoint_dir": run_dir.resolve() / "checkpoints", "resume_from": None,
        }
    )  # fmt: skip


def replay_pending_records(cfg: TrainerConfig | None, sender: RecordSender, log) -> int:
    """Send again the records a stopped trainer's checkpoint holds unconfirmed; the recorder stores each once."""
    if cfg is None:
        return 0
    try:
        state = read_state(cfg.checkpoint_file)
    except CheckpointError:
        return 0  # no epoch completed: nothing to keep
    for topic, body in state.pending_records:
        try:
            sender.send(decode([topic.encode(), body.encode()]))
        except BusDecodeError as exc:  # a checkpoint from another build: its records cannot be trusted
            log.warning("checkpoint_record_skipped", run_id=cfg.run_id, reason=exc.reason)
    if state.pending_records:
        log.info("checkpoint_records_replayed", run_id=cfg.run_id, records=len(state.pending_records))
    return len(state.pending_records)


def wait_for_agent(orch: Orchestrator, cfg: AgentConfig, run_id: str, sender: RecordSender) -> bool:
    """The agent's start-up handshake, before any trainer depends on it (a dead agent is restarted meanwhile)."""
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


def _ignore_stop_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


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


if __name__ == "__main__":
    sys.exit(main())
