"""What an invocation runs: the arms of a sweep, a replay or a resume, planned from the flags and the database."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
from pydantic import ValidationError

from agents.config import AgentConfig, upgrade_recorded_agent
from orchestration.cli import CliError
from orchestration.spec import AA_CONTROLLER, BASELINE_CONTROLLER, RunSpec, guided_controllers
from storage import queries
from trainer.checkpoint import CheckpointError, read_state
from trainer.config import TrainerConfig, upgrade_recorded_config

# The A/A arm's order seed is its run seed plus this: far from the seeds a sweep uses (0, 1, 2, ...), so an A/A
# order never repeats another seed's baseline order.
AA_ORDER_SEED_OFFSET = 10_000


@dataclass
class Arm:
    """One training run of the sweep: (regime, seed) x baseline, the A/A arm or a guided controller."""

    name: str  # baseline | aa | guided
    controller: str
    regime: str
    seed: int
    pair_id: str
    run_id: str
    fingerprint: str  # what makes two runs the same experiment; a completed one is not run again
    legacy_fingerprint: str | None = None  # the same experiment as recorded before tasks existed (MNIST)
    status: str = "pending"
    replay_of: str | None = None  # the recorded run whose commands this one applies again
    recorded: dict | None = None  # replay: the original trainer config and commands; resume: trainer and agent
    resume_from: Path | None = None  # resume: the run's checkpoint
    resume_epoch: int = 0  # resume: the last completed epoch, the one the checkpoint holds
    exit_code: int | None = None  # the trainer's, once it ran
    checkpoint: Path | None = None  # the trainer's checkpoint file, once its config is built
    experiment: dict | None = None  # what the fingerprint hashes (``runs.config->'experiment'``); None: replay, resume
    order_seed: int | None = None  # the trainer's order seed (TrainerConfig.order_seed): set for the A/A arm


def plan_replay(spec: RunSpec) -> Arm:
    """One arm that re-runs the recorded guided run ``spec.replay`` with its recorded commands."""
    with duckdb.connect(str(spec.db), read_only=True) as con:
        run = queries.recorded_run(con, spec.replay)
        try:
            commands = queries.recorded_commands(con, spec.replay) if run is not None else {}
        except ValueError as exc:  # pydantic's ValidationError: a command this build cannot apply
            raise CliError(f"--replay: run {spec.replay!r} has a recorded command this version cannot apply: "
                           f"{str(exc).splitlines()[0]}") from None  # fmt: skip
    if run is None:
        raise CliError(f"--replay: no run {spec.replay!r} in {spec.db}")
    if run.arm != "guided" or not commands:
        raise CliError(f"--replay: run {spec.replay!r} has no recorded decisions to replay (arm {run.arm})")
    # commands: epoch -> UpdateCommand (schema 1 commands converted to the named-knob form)
    recorded_trainer(spec.replay, run.config, "--replay")
    recorded = {"trainer": run.config["trainer"], "commands": commands}
    run_id = f"{spec.replay}-replay-{uuid.uuid4().hex[:6]}"
    return Arm("guided", "replay", run.regime, run.seed, run.pair_id, run_id, uuid.uuid4().hex[:16],
               replay_of=spec.replay, recorded=recorded)  # fmt: skip


def plan_resume(spec: RunSpec) -> Arm:
    """The recorded run ``spec.resume``, to continue from its checkpoint with its recorded settings."""
    with duckdb.connect(str(spec.db), read_only=True) as con:
        run = queries.recorded_run(con, spec.resume)
    if run is None:
        raise CliError(f"--resume: no run {spec.resume!r} in {spec.db}")
    arm, controller, regime, seed, pair_id, status, config = (
        run.arm, run.controller, run.regime, run.seed, run.pair_id, run.status, run.config
    )  # fmt: skip
    if status == "completed":
        raise CliError(f"--resume: run {spec.resume!r} is already completed")
    trainer = recorded_trainer(spec.resume, config, "--resume")
    if config.get("agent"):
        try:
            AgentConfig.model_validate(upgrade_recorded_agent(config["agent"]))  # its controller must still resolve
        except ValueError as exc:
            raise CliError(f"--resume: run {spec.resume!r} has an agent this installation cannot start: "
                           f"{_first_error(exc)}") from None  # fmt: skip
    try:
        state = read_state(trainer.checkpoint_file)
    except CheckpointError as exc:
        raise CliError(f"--resume: {exc}; without it run {spec.resume!r} can only be run again from epoch 1") from None
    if state.run_id != spec.resume:
        raise CliError(f"--resume: {trainer.checkpoint_file} belongs to run {state.run_id!r}")
    return Arm(
        arm, controller, regime, seed, pair_id, spec.resume, config.get("fingerprint") or uuid.uuid4().hex[:16],
        replay_of=config.get("replay_of"), recorded={"trainer": config["trainer"], "agent": config.get("agent")},
        resume_from=trainer.checkpoint_file, resume_epoch=state.epoch, experiment=config.get("experiment"),
    )  # fmt: skip


def recorded_trainer(run_id: str, config: dict, flag: str) -> TrainerConfig:
    """The run's recorded trainer config in this version's form, its task loadable here and its regime one of
    the task's; CliError (one line) otherwise — a task plugin that is no longer installed, say."""
    from tasks.registry import UnknownTaskError, task_class

    try:
        trainer = TrainerConfig.model_validate(upgrade_recorded_config(config["trainer"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CliError(f"{flag}: run {run_id!r} has no usable trainer config: {_first_error(exc)}") from None
    try:
        declared = task_class(trainer.task, trainer.task_options)
    except UnknownTaskError as exc:
        raise CliError(f"{flag}: run {run_id!r}: {exc}") from None
    if trainer.regime not in declared.regimes:
        raise CliError(f"{flag}: run {run_id!r} used regime {trainer.regime!r}, which task {declared.name!r} no longer has")
    return trainer


def _first_error(exc: Exception) -> str:
    """One line for an exception; a pydantic ValidationError's first error with its field."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def prepare_resume(db: Path, arm: Arm) -> dict[str, int]:
    """Before the recorder opens the database: drop the rows of epochs after the checkpoint (they run
    again, and their decisions may differ) and mark the run running. Returns the rows dropped per table."""
    with duckdb.connect(str(db)) as con:
        return queries.discard_epochs_after(
            con, arm.run_id, arm.resume_epoch, f"resumed after epoch {arm.resume_epoch}"
        )


def compare_replay(db: Path, original: str, replay: str) -> str:
    """How closely the replay's epochs match the original's: the objective, the metric that differs most
    besides it, and how many epochs ran with other knob values."""
    with duckdb.connect(str(db), read_only=True) as con:
        c = queries.compare_runs(con, original, replay)

    def fmt(delta: float | None) -> str:
        return "n/a" if delta is None else f"{delta:.2e}"

    other = c.largest_other()
    others = f", other metrics {fmt(other[1])} ({other[0]})" if other else ""
    return (
        f"replay {replay} of {original}: {c.epochs} epochs compared; max |delta| {c.objective} "
        f"{fmt(c.objective_delta)}{others}; epochs with other hyperparameters: {c.hyperparameter_epochs}"
    )


@dataclass(frozen=True)
class TaskIdentity:
    """What planning needs to know of the task: its declared name (``runs.task``) and its factory's keyword
    defaults (an option left at its default and the same option given explicitly are the same experiment)."""

    name: str
    option_defaults: dict


# Task options that change where files are or how fast, not what is trained: not part of an experiment's identity.
NON_EXPERIMENT_OPTIONS = ("data_dir", "compile_eval")


def training_options(task_options: dict, defaults: dict | None = None) -> dict:
    """The task options that make two runs different experiments: ``task_options`` over the factory's
    ``defaults``, without ``NON_EXPERIMENT_OPTIONS`` and unset (None) values."""
    merged = {**(defaults or {}), **task_options}
    return {k: v for k, v in merged.items() if k not in NON_EXPERIMENT_OPTIONS and v is not None}


def experiment(spec: RunSpec, task: TaskIdentity, regime: str, seed: int, arm: str, controller: str,
               uses_llm: bool) -> dict:  # fmt: skip
    """What makes a run the same experiment as another (its fingerprint is a hash of this): the task and its
    training options, regime, seed, epochs, arm, controller, the knob values it starts from (``start``, absent
    when none are given: runs recorded before --start keep their identity), and the agent's and model's settings."""
    what = {
        "task": spec.task, "task_options": training_options(spec.task_options, task.option_defaults),
        "regime": regime, "seed": seed, "epochs": spec.epochs, "arm": arm, "controller": controller,
    }  # fmt: skip
    if spec.start:
        what["start"] = dict(spec.start)
    if spec.decisions != "sync" and controller not in ("none", "aa"):  # absent when sync: older runs keep their identity
        what["decisions"] = spec.decisions
    return what | agent_part(spec, controller, uses_llm)


def agent_part(spec: RunSpec, controller: str, uses_llm: bool) -> dict:
    """The agent's and model's settings in an experiment's identity."""
    what: dict = {}
    if controller != "none":
        what |= {"nodes": spec.pipeline, "max_repairs": spec.max_repairs}
        if spec.instructions:  # absent when none: runs recorded before instructions existed keep their identity
            # How an instruction was read is a record of the reader, not part of the experiment.
            what["instructions"] = [i.model_dump(exclude={"reading"}) for i in spec.instructions]
    if uses_llm:
        llm = spec.llm
        what |= {
            "llm_model": llm.model_name, "llm_provider": "openai" if llm.remote else "local",
            "command_space": llm.resolved_command_space(), "temperature": llm.temperature,
            "llm_reflection": llm.reflection, "feed_reflection": llm.feed_reflection,
        }  # fmt: skip
        if llm.resolved_decision() == "expert":  # absent for the free form: runs recorded before it keep their identity
            what["decision"] = "expert"
        what |= llm.caps()  # a cap changes decisions; absent when not set, so runs recorded before caps keep theirs
    return what


def legacy_experiment(spec: RunSpec, task: TaskIdentity, regime: str, seed: int, arm: str, controller: str,
                      uses_llm: bool) -> dict | None:  # fmt: skip
    """The same experiment as ReflectNet recorded it before tasks existed (MNIST only, batch size the one
    option), so a sweep over a database from then skips what it completed; None where no such run can exist
    (another task or option, ``plateau``, which then watched val_loss and now watches the objective, the A/A arm
    or a --start, which did not exist)."""
    options = training_options(spec.task_options, task.option_defaults)
    if spec.task != "mnist" or set(options) - {"batch_size"} or controller == "plateau" or arm == "aa" or spec.start:
        return None
    what = {"regime": regime, "seed": seed, "epochs": spec.epochs, "batch_size": options.get("batch_size", 64),
            "arm": arm, "controller": controller}  # fmt: skip
    return what | agent_part(spec, controller, uses_llm)


def fingerprint(what: dict) -> str:
    """A short stable hash of an experiment's identity (``runs.config->>'fingerprint'``)."""
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def plan_arms(spec: RunSpec, task: TaskIdentity, recorded: list[queries.PairRow], uses_llm: dict[str, bool]) -> list[Arm]:
    """Every run the spec asks for, within each (regime, seed) pair the baseline first, then the A/A arm (asked
    for with the pseudo controller ``aa``: the baseline again, its order seed the seed plus
    :data:`AA_ORDER_SEED_OFFSET`, run id ``<pair_id>-aa``), then the guided arms. ``recorded``: the runs the
    database holds (a pair of the same task recorded earlier with the same data, schedule and start is joined; a
    run id is never reused); ``uses_llm``: controller name -> whether it calls a model (``agents.controllers``).
    Pure."""
    steered = spec.arms in ("both", "guided")
    guided = guided_controllers(spec.controllers) if steered else []
    with_baseline = spec.arms in ("both", "baseline") or spec.controllers == [BASELINE_CONTROLLER]
    planned = [("baseline", BASELINE_CONTROLLER)] if with_baseline else []
    planned += [("aa", BASELINE_CONTROLLER)] if steered and AA_CONTROLLER in spec.controllers else []
    planned += [("guided", c) for c in guided]
    pairs = recorded_pairs(recorded, task)
    taken = {row.run_id for row in recorded}
    arms = []
    for regime in spec.regimes:
        for seed in range(spec.seed, spec.seed + spec.seeds):
            options = training_options(spec.task_options, task.option_defaults)
            pair_id = pairs.get((regime, seed, spec.epochs, _key(options), _key(spec.start))) or uuid.uuid4().hex[:12]
            for name, controller in planned:
                llm = uses_llm.get(controller, False)
                what = experiment(spec, task, regime, seed, name, controller, llm)
                legacy = legacy_experiment(spec, task, regime, seed, name, controller, llm)
                run_id = f"{pair_id}-{name if controller == BASELINE_CONTROLLER else controller.replace(':', '.')}"
                if run_id in taken:  # run again (--rerun, or after a failure): a run id is never reused
                    run_id = f"{run_id}-{uuid.uuid4().hex[:6]}"
                arm = Arm(name, controller, regime, seed, pair_id, run_id, fingerprint(what), experiment=what)
                arm.legacy_fingerprint = fingerprint(legacy) if legacy is not None else None
                arm.order_seed = seed + AA_ORDER_SEED_OFFSET if name == "aa" else None
                arms.append(arm)
    return arms


def _key(options: dict) -> str:
    return json.dumps(options, sort_keys=True)


def recorded_pairs(recorded: list[queries.PairRow], task: TaskIdentity) -> dict[tuple, str]:
    """(regime, seed, epochs, training options, start) -> pair_id of the earliest recorded pair of ``task``: a
    bad-start run is never paired with a good-start one of the same seed."""
    pairs: dict[tuple, str] = {}
    for row in recorded:
        if row.task == task.name:
            options = training_options(row.task_options, task.option_defaults)
            pairs.setdefault((row.regime, row.seed, row.epochs, _key(options), _key(row.start)), row.pair_id)
    return pairs


def read_recorded_runs(db: Path) -> list[queries.PairRow]:
    """The runs ``db`` holds, as sweep planning needs them."""
    with duckdb.connect(str(db), read_only=True) as con:
        return queries.recorded_pairs(con)


def completed_runs(db: Path) -> dict[str, str]:
    """fingerprint -> run_id of every completed run in the database."""
    with duckdb.connect(str(db), read_only=True) as con:
        return queries.completed_fingerprints(con)
