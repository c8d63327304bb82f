"""One invocation of ``run.py`` from start to table: the recorder, the model server and the agents
started, each planned arm trained in turn, every record confirmed, everything stopped in order."""

from __future__ import annotations

import argparse
import signal
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from agents.config import AgentConfig
from agents.llm import LLMSettings
from agents.llm_server import LLMServerError
from bus.log import configure_logging
from bus.messages import BusDecodeError, ControlRequest, RunFinished, RunStarted, UpdateCommand, decode
from bus.transport import RecordSender, RequestClient, free_tcp_endpoint
from orchestration.cli import CliError, agent_timeout_s, command_space, llm_settings
from orchestration.planning import (
    Arm,
    compare_replay,
    completed_runs,
    plan_arms,
    plan_replay,
    plan_resume,
    prepare_resume,
)
from orchestration.supervisor import (
    AGENT_BUSY_SLACK_S,
    RECORDER_MISSES,
    STARTUP_TIMEOUT_S,
    ChildLost,
    Orchestrator,
    start_local_llm,
    wait_for_agent,
    wait_for_recorder,
)
from storage.recorder import RecorderConfig
from trainer.checkpoint import CheckpointError, read_state
from trainer.config import TrainerConfig
from trainer.defaults import EXIT_DATA_UNAVAILABLE, EXIT_INTERRUPTED, EXIT_OK, REGIMES, default_data_dir


def run_invocation(args: argparse.Namespace, pipeline: list[str]) -> int:
    """Carry out a checked command line; the exit code (0 all completed, 1 a run failed, 2 a bad
    --replay/--resume, 130 interrupted)."""
    # SIGINT explicitly: a process started in the background (`cmd &`, nohup, some CI runners) inherits it as
    # ignored, and Python then installs no KeyboardInterrupt handler. SIGTERM/SIGHUP (a scheduler's time limit, a
    # closed terminal) stop the run as Ctrl-C does.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
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
        # The recorder's control socket is served by its main loop: a ping there checks the loop itself.
        recorder = orch.spawn(
            "recorder", "storage", recorder_cfg, health=recorder_cfg.control_endpoint, misses=RECORDER_MISSES
        )
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
                # Stuck on one request past the trainer's timeout (+ slack for a slow final token): restart it.
                busy_limit_s = trainer_cfg.agent_timeout_ms / 1000 + AGENT_BUSY_SLACK_S
                orch.spawn(f"agent-{arm.controller}", "agents", agent_cfg, agent_cfg.health_endpoint, busy_limit_s)
                wait_for_agent(orch, agent_cfg, arm.run_id, sender)
            log.info("arm_started", run_id=arm.run_id, arm=arm.name, controller=arm.controller)
            running = arm
            trainer = orch.spawn("trainer", "trainer", trainer_cfg)
            code = orch.wait(trainer, sender)
            running = None
            orch.stop_child("trainer")
            replay_pending_records(trainer_cfg, sender, log)
            arm.status = {EXIT_OK: "completed", EXIT_INTERRUPTED: "interrupted"}.get(code, "failed")
            arm.exit_code = code
            sender.send(
                RunFinished(
                    run_id=arm.run_id,
                    status=arm.status,
                    finished_at=_utc_now(),
                    reason=None if code == EXIT_OK else trainer_failure(code),
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
        if orch.liveness is not None:
            orch.liveness.stop()  # it owns sockets: the context cannot terminate before it
        orch.ctx.term()
    if any(a.status != "pending" for a in arms):
        print_results(
            args.db, [a.replay_of for a in arms if a.replay_of] + [a.run_id for a in arms if a.status != "pending"]
        )
    for arm in arms:
        if arm.replay_of and arm.status == "completed":
            print(compare_replay(args.db, arm.replay_of, arm.run_id))
        if arm.status in ("failed", "interrupted") and arm.exit_code != EXIT_DATA_UNAVAILABLE:
            print(
                f"resume {arm.run_id} from its last completed epoch: python run.py --resume {arm.run_id} --db {args.db}"
            )
    if interrupted:
        return 130
    if failed_to_start:
        return 1
    return 0 if all(a.status == "completed" for a in arms) else 1


def trainer_failure(code: int) -> str:
    """``runs.status_reason`` for a trainer that exited with ``code``."""
    if code == EXIT_DATA_UNAVAILABLE:  # --resume cannot help: the data must be fixed first (the trainer said how)
        return "data_error: no MNIST source worked (see the trainer's message)"
    return f"trainer exit code {code}"


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
        "health_endpoint": free_tcp_endpoint(),
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
        "agent_health_endpoint": agent_cfg.health_endpoint if agent_cfg else None,
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


def _ignore_stop_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _utc_now() -> float:
    return time.time()


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
