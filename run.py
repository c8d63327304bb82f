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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import zmq

from agents.config import AgentConfig
from agents.graph import UnknownNodeError, check_pipeline, pipeline_with, resolve_node
from agents.llm import DEFAULT_REMOTE_MODEL, LOCAL_MODEL_NAME, LLMSettings
from agents.llm_server import LLMServerError, LocalLLMServer
from bus.log import configure_logging
from bus.messages import ControlReply, ControlRequest, RunFinished, RunStarted, UpdateCommand
from bus.transport import RecordSender, RequestClient, free_tcp_endpoint
from storage.recorder import RecorderConfig
from storage.report import ReportError, run_sql, write_report
from storage.schema import migrate
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
    recorded: dict | None = None  # for a replay: the original trainer config and commands


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
    for regime in args.regime:
        for seed in range(args.seed, args.seed + args.seeds):
            pair_id = uuid.uuid4().hex[:12]
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
                arms.append(Arm(name, controller, regime, seed, pair_id, run_id, fingerprint))
    return arms


def completed_runs(db: Path) -> dict[str, str]:
    """fingerprint -> run_id of every completed run in the database."""
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT config->>'fingerprint', run_id FROM runs WHERE status = 'completed' ORDER BY finished_at"
        ).fetchall()
    return {fingerprint: run_id for fingerprint, run_id in rows if fingerprint}


@dataclass
class Orchestrator:
    """Starts, watches and stops the recorder, agent and trainer processes of one invocation."""

    args: argparse.Namespace
    run_dir: Path
    ctx: zmq.Context = field(default_factory=zmq.Context)
    children: dict[str, subprocess.Popen] = field(default_factory=dict)

    def spawn(self, name: str, module: str, config) -> subprocess.Popen:
        path = self.run_dir / f"{name}.json"
        path.write_text(config.model_dump_json(indent=2))
        # Own session: a Ctrl-C in the terminal reaches only run.py, which then stops the children in order.
        proc = subprocess.Popen([sys.executable, "-m", module, "--config", str(path)], start_new_session=True)
        self.children[name] = proc
        return proc

    def stop_child(self, name: str, grace_s: float = STOP_GRACE_S) -> int | None:
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
        arms = [plan_replay(args)] if args.replay else plan_arms(args, pipeline, settings)
    except CliError as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    if args.replay:
        settings = None
    done = {} if args.rerun or args.replay else completed_runs(args.db)
    for arm in arms:
        if arm.fingerprint in done:
            arm.run_id, arm.status = done[arm.fingerprint], "completed"
    todo = [arm for arm in arms if arm.status == "pending"]
    regimes = ",".join(dict.fromkeys(a.regime for a in arms))
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
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"run directory {run_dir}", flush=True)
    orch = Orchestrator(args, run_dir)
    recorder_cfg = RecorderConfig(
        db_path=args.db.resolve(),
        endpoint=free_tcp_endpoint(),
        control_endpoint=free_tcp_endpoint(),
        run_dir=run_dir.resolve(),
    )
    sender = RecordSender(orch.ctx, recorder_cfg.endpoint)
    log = configure_logging("orchestrator", run_dir / "logs", forward=sender.send)
    control = RequestClient(orch.ctx, recorder_cfg.control_endpoint, timeout_ms=5000, retries=0)
    interrupted = failed_to_start = False
    agents: dict[str, AgentConfig] = {}
    running: Arm | None = None
    try:
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
            if arm.controller not in ("none", "replay"):
                if arm.controller not in agents:
                    agents[arm.controller] = AgentConfig(
                        endpoint=free_tcp_endpoint(),
                        recorder_endpoint=recorder_cfg.endpoint,
                        run_dir=run_dir.resolve(),
                        controller=arm.controller,
                        llm=settings if arm.controller == "llm" else None,
                        llm_reflection=not args.no_llm_reflection,
                        feed_reflection=not args.no_reflection_feedback,
                        command_space=command_space(args, settings),
                        nodes=pipeline,
                        max_repairs=args.max_repairs,
                    )
                    orch.spawn(f"agent-{arm.controller}", "agents", agents[arm.controller])
                agent_cfg = agents[arm.controller]
            trainer_cfg = TrainerConfig(
                run_id=arm.run_id, pair_id=arm.pair_id, arm=arm.name, controller=arm.controller, regime=arm.regime,
                seed=arm.seed, epochs=args.epochs, batch_size=args.batch_size, device=args.device,
                compile_eval=not args.no_compile,
                data_dir=(args.data_dir or default_data_dir()).resolve(), run_dir=run_dir.resolve(),
                recorder_endpoint=recorder_cfg.endpoint, agent_endpoint=agent_cfg.endpoint if agent_cfg else None,
                agent_timeout_ms=int(agent_timeout_s(args) * 1000), agent_retries=args.agent_retries,
            )  # fmt: skip
            if arm.recorded is not None:
                original = TrainerConfig.model_validate(arm.recorded["trainer"])
                trainer_cfg = original.model_copy(update={
                    "run_id": arm.run_id, "controller": "replay", "data_dir": trainer_cfg.data_dir,
                    "run_dir": trainer_cfg.run_dir, "recorder_endpoint": trainer_cfg.recorder_endpoint,
                    "agent_endpoint": None, "replay_commands": {
                        int(epoch): UpdateCommand.model_validate(command) for epoch, command in arm.recorded["commands"].items()
                    },
                })  # fmt: skip
            print(
                f"[{number}/{len(todo)}] regime {arm.regime} ({REGIMES[arm.regime]} images) | seed {arm.seed} | "
                f"{arm.name} | controller {arm.controller}",
                flush=True,
            )
            sender.send(
                RunStarted(
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
            )
            log.info("arm_started", run_id=arm.run_id, arm=arm.name, controller=arm.controller)
            running = arm
            trainer = orch.spawn("trainer", "trainer", trainer_cfg)
            code = trainer.wait()
            running = None
            orch.children.pop("trainer", None)
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
    except LLMServerError as exc:
        failed_to_start = True
        log.error("llm_server_failed", error=str(exc))
        print(f"run.py: error: {exc}", file=sys.stderr, flush=True)
    except KeyboardInterrupt as stop:
        interrupted = True
        signal_name = str(stop) or "SIGINT"
        print("\ninterrupted: stopping the processes ...", file=sys.stderr, flush=True)
        orch.stop_child("trainer")
        if running is not None:
            running.status = "interrupted"
            sender.send(
                RunFinished(run_id=running.run_id, status="interrupted", finished_at=_utc_now(), reason=signal_name)
            )
        log.warning("interrupted")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon the shutdown
        for name in [n for n in orch.children if n.startswith("agent")]:
            orch.stop_child(name)
        orch.stop_child("llm")
        log.info("shutdown", interrupted=interrupted)
        sender.close()  # LINGER hands every queued record to the recorder before it is told to stop
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
    if interrupted:
        return 130
    if failed_to_start:
        return 1
    return 0 if all(a.status == "completed" for a in arms) else 1


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def start_local_llm(orch: Orchestrator, settings: LLMSettings, log) -> LLMSettings:
    """Start the embedded model server, wait until it answers; the settings then point at it."""
    server = LocalLLMServer(orch.run_dir / "logs" / "llm-server.log")
    orch.children["llm"] = server.start()
    started = time.monotonic()
    server.wait_ready()
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
