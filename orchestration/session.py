"""One invocation of ``run.py`` from plan to table: plan the arms (a sweep, a replay or a resume), skip what is
already completed, let the :class:`orchestration.runner.Runner` train the rest, print the results."""

from __future__ import annotations

import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

from agents.controllers import resolve_controller
from agents.config import LLMSettings, upgrade_recorded_agent
from bus.child import EXIT_DATA_UNAVAILABLE, EXIT_TASK_BROKEN
from orchestration.cli import CliError
from orchestration.cli.schedule import controller_notices, schedule_notice
from orchestration.configs import llm_settings
from orchestration.planning import (
    Arm,
    TaskIdentity,
    compare_replay,
    completed_runs,
    plan_arms,
    plan_replay,
    plan_resume,
    read_recorded_runs,
)
from orchestration.runner import Runner, interrupt_on_stop_signals
from orchestration.spec import RunSpec
from tasks.registry import task_class, training_defaults
from trainer.checkpoint import CheckpointError, read_state
from trainer.config import ScheduledInstruction


def plan(spec: RunSpec) -> tuple[list[Arm], LLMSettings | None]:
    """The arms the spec asks for, completed ones marked so (unless --rerun), and the model settings they
    need; raises CliError for a bad --replay/--resume."""
    if spec.replay:
        return [plan_replay(spec)], None
    if spec.resume:
        arm = plan_resume(spec)
        agent = arm.recorded["agent"]
        llm = upgrade_recorded_agent(agent)["llm"] if agent and agent.get("llm") else None
        return [arm], LLMSettings.model_validate(llm) if llm else None
    uses_llm = {c: resolve_controller(c).uses_llm for c in spec.controllers if c != "none"}
    task = TaskIdentity(task_class(spec.task, spec.task_options).name, training_defaults(spec.task))
    arms = plan_arms(spec, task, read_recorded_runs(spec.db), uses_llm)
    done = {} if spec.rerun else completed_runs(spec.db)
    for arm in arms:
        found = done.get(arm.fingerprint) or done.get(arm.legacy_fingerprint)
        if found is not None:
            arm.run_id, arm.status = found, "completed"
    return arms, llm_settings(spec)


def headline(spec: RunSpec, arms: list[Arm], todo: list[Arm]) -> str:
    if spec.resume:
        arm = arms[0]
        return (
            f"ReflectNet | resuming run {arm.run_id} ({arm.name}, controller {arm.controller}, regime {arm.regime}, "
            f"seed {arm.seed}) after epoch {arm.resume_epoch} of {arm.recorded['trainer']['epochs']} | {spec.db}"
        )
    trainer = arms[0].recorded["trainer"] if spec.replay else {"task": spec.task, "task_options": spec.task_options}
    task = task_label(trainer.get("task", "mnist"), trainer.get("task_options", {}))
    regimes = ",".join(dict.fromkeys(a.regime for a in arms))
    return (
        f"ReflectNet | task {task} | regime {regimes} | seeds {spec.seed}..{spec.seed + spec.seeds - 1} | "
        f"{spec.epochs} epochs | controller {','.join(spec.controllers)} | {len(arms)} run(s), "
        f"{len(arms) - len(todo)} already completed in {spec.db}"
    )


def task_label(task: str, options: dict) -> str:
    """The task's declared name, with how it was given when that differs (a plugin: ``linefit
    (userpkg.linefit:make_task)``)."""
    name = task_class(task, options).name
    return name if name == task else f"{name} ({task})"


def make_run_dir(spec: RunSpec, arms: list[Arm]) -> Path:
    """``<out>/<utc time>-<regimes>-<random>``; raises CliError (one line) when it cannot be created."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    regimes = "_".join(dict.fromkeys(a.regime for a in arms))
    run_dir = spec.out / f"{stamp}-{regimes}-{uuid.uuid4().hex[:8]}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out {spec.out}: cannot create the run directory: {exc.strerror}") from None
    return run_dir


def run_invocation(spec: RunSpec) -> int:
    """Carry out a checked run specification; the exit code (0 all completed, 1 a run failed, 2 a bad
    --replay/--resume or --out, 130 interrupted)."""
    interrupt_on_stop_signals()
    try:
        arms, settings = plan(spec)
        todo = [arm for arm in arms if arm.status == "pending"]
        print(headline(spec, arms, todo), flush=True)
        if not todo:
            print_results(spec.db, [a.run_id for a in arms])
            return 0
        run_dir = make_run_dir(spec, arms)
    except CliError as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"run directory {run_dir}", flush=True)
    guided = [arm.controller for arm in todo if arm.name == "guided"]
    if guided and not (spec.replay or spec.resume):  # a replay or a resume runs the instructions it recorded
        spec = with_readings(spec)
        for line in instruction_readings(spec, guided):
            print(line, flush=True)
    runner = Runner(spec, run_dir, settings)
    runner.run(todo)
    report_outcome(spec, arms)
    if runner.interrupted:
        return 130
    if runner.aborted:
        return 1
    return 0 if all(a.status == "completed" for a in arms) else 1


def with_readings(spec: RunSpec) -> RunSpec:
    """``spec`` with each instruction of ``--instruction``/``--instructions`` that the run will give carrying its
    reading for the task (``agents.expert.reading``, as ``agents.expert.record.reading_record`` records it), which
    the trainer sends on with the instruction to the ``instructions`` table. A line after the last epoch is never
    given, so it is not read."""
    if not any(_to_read(item, spec.epochs) for item in spec.instructions):
        return spec
    from agents.expert.reading import read
    from agents.expert.record import reading_record

    task = task_class(spec.task, spec.task_options).spec()
    instructions = [
        item.model_copy(update={"reading": reading_record(read(item.text, task), task)})
        if _to_read(item, spec.epochs) else item
        for item in spec.instructions
    ]  # fmt: skip
    return spec.model_copy(update={"instructions": instructions})


def _to_read(item: ScheduledInstruction, epochs: int) -> bool:
    return item.text is not None and item.reading is None and item.from_epoch <= epochs


def instruction_readings(spec: RunSpec, controllers: list[str]) -> list[str]:
    """What becomes of each instruction of ``--instruction``/``--instructions``, said before training starts, one
    line each: how it is read for the task (``instruction from epoch 1: 'TEXT' -> read as: ...``, the reading
    :func:`with_readings` attached), or for a line after the last epoch that it will not be given; a line for the
    last epoch is followed by why it cannot change training; then, once each, the ``controllers`` (those of the
    guided runs) that do not read instructions (``orchestration.cli.schedule``)."""
    lines = []
    for item in with_readings(spec).instructions:
        if item.from_epoch <= spec.epochs:  # with_readings read every one of these that has a text
            lines.append(f"instruction from epoch {item.from_epoch}: {item.text!r} -> {item.reading.read_as}"
                         if item.text else f"instruction from epoch {item.from_epoch}: cleared")  # fmt: skip
        if (notice := schedule_notice(item, spec.epochs)) is not None:
            lines.append(notice)
    return lines + controller_notices(spec.instructions, controllers)


def report_outcome(spec: RunSpec, arms: list[Arm]) -> None:
    """The results table, how a replay compares with its original, and what to run for each run that did not
    finish: ``--resume`` from its checkpoint, or, stopped before its first epoch ended (no checkpoint, which
    ``--resume`` refuses), the same command again, which starts it over."""
    if any(a.status != "pending" for a in arms):
        print_results(spec.db, [a.replay_of for a in arms if a.replay_of] + [a.run_id for a in arms if a.status != "pending"])
    for arm in arms:
        if arm.replay_of and arm.status == "completed":
            print(compare_replay(spec.db, arm.replay_of, arm.run_id))
        if arm.status in ("failed", "interrupted") and arm.exit_code not in (EXIT_DATA_UNAVAILABLE, EXIT_TASK_BROKEN):
            print(resume_hint(spec, arm))


def resume_hint(spec: RunSpec, arm: Arm) -> str:
    """What to run to finish ``arm``, which failed or was interrupted: ``--resume`` when it has a readable
    checkpoint (what ``planning.plan_resume`` accepts), else the same command again."""
    if arm.checkpoint is not None and _readable(arm.checkpoint):
        return f"resume {arm.run_id} from its last completed epoch: python run.py --resume {arm.run_id} --db {spec.db}"
    return (f"run {arm.run_id} stopped before its first epoch ended, so there is nothing to resume: run the same "
            f"command again to start it over (runs already completed are skipped)")  # fmt: skip


def _readable(checkpoint: Path) -> bool:
    try:
        read_state(checkpoint)
    except CheckpointError:
        return False
    return True


def print_results(db: Path, run_ids: list[str]) -> None:
    """The results table of these runs (the paper's for MNIST, objective final/best per task otherwise)."""
    from storage.reader import ReaderError
    from storage.report import results_text

    try:
        table = results_text(db, run_ids)
    except ReaderError as exc:
        print(f"cannot read results from {db}: {exc}")
        return
    print()
    print(table)
    print(
        f"\nrecorded in {db}; next: python run.py report --db {db}   or   "
        f'python run.py sql "SELECT * FROM decision_outcomes" --db {db}'
    )
