"""What an invocation runs: the arms of a sweep, a replay or a resume, planned from the flags and the database."""

from __future__ import annotations

import argparse
import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb

from agents.llm import LLMSettings
from orchestration.cli import CliError, command_space
from trainer.checkpoint import CheckpointError, read_state
from trainer.config import TrainerConfig


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
    exit_code: int | None = None  # the trainer's, once it ran


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
