"""The trainer process: trains one arm of a task, reports every epoch, asks the agent, applies its command.

Run as ``python -m trainer --config <run_dir>/<run_id>.trainer.json`` (the orchestrator does this). The
task (``tasks.registry``) owns data, model, optimizer and the epoch; this process owns the protocol:
checkpoint, records, the agent's decision, the blend of the next epoch, and the best epoch's checkpoint that a
command with ``rollback`` returns to.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bus.child import EXIT_DATA_UNAVAILABLE, EXIT_OK, EXIT_ORPHANED, EXIT_TASK_BROKEN, Child, run_child
from bus.messages import (
    Decision,
    EpochMetrics,
    EpochRecord,
    EpochSummary,
    Instruction,
    LogEvent,
    Reflection,
    TaskSpec,
    UpdateCommand,
    BusDecodeError,
    best_epoch,
    decode,
    encode,
)
from bus.transport import RecordSender
from tasks.base import DataUnavailableError, EpochResult, Task, setup_task
from tasks.registry import make_task
from trainer.agent_client import ask_agent, charged, command_deltas, connect_agent, log_outcome
from trainer.async_decisions import DecisionChannel
from trainer.checkpoint import (
    CheckpointError,
    TrainingState,
    best_path,
    load_checkpoint,
    read_state,
    restore_best,
    save_checkpoint,
)
from trainer.config import TrainerConfig
from trainer.contract import TaskContractError, check_epoch_result, set_hyperparameters
from trainer.inbox import InstructionInbox, decision_records, update_instruction
from trainer.progress import progress_line


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch.cuda.is_available() is False")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass
class Carry:
    """What one epoch hands the next: knob values and blend to use, the epoch deltas, the history the agent
    sees, the last command and its verdict."""

    hyperparameters: dict[str, float]
    alpha: float
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)
    last_steps: int = 0
    history: list[EpochSummary] = field(default_factory=list)
    previous_command: UpdateCommand | None = None
    previous_reflection: Reflection | None = None
    first_epoch: int = 1
    instruction: Instruction | None = None  # the user's instruction for the next decision
    instruction_index: int | None = None  # its entry in TrainerConfig.instructions
    instruction_shaped: bool = False  # a decision was made with it


def build_task(cfg: TrainerConfig, device: torch.device, log) -> Task:
    """The configured task, set up for the run's regime, seed and order seed, with the initial knob values applied.
    Raises UnknownTaskError / ValueError for a bad task, regime or knob, DataUnavailableError for data."""
    task = make_task(cfg.task, cfg.task_options)
    task.set_event_sink(lambda level, event, data: getattr(log, level, log.info)(event, **data))
    setup_task(task, cfg.regime, cfg.seed, device, order_seed=cfg.order_seed)
    if cfg.hyperparameters:
        set_hyperparameters(task, cfg.hyperparameters)
    return task


def resume(cfg: TrainerConfig, task: Task, sender: RecordSender, device: torch.device, log) -> Carry:
    """The carry after the checkpointed epoch, the task restored in place; records the recorder may not
    have are sent again (it stores each once)."""
    state, deltas = load_checkpoint(cfg.resume_from, cfg.run_id, task, device)
    carry = Carry(
        hyperparameters=dict(state.hyperparameters), alpha=state.alpha, deltas=deltas, last_steps=state.last_steps,
        history=[EpochSummary.model_validate(h) for h in state.history],
        previous_command=UpdateCommand.model_validate(state.previous_command) if state.previous_command else None,
        previous_reflection=(
            Reflection.model_validate(state.previous_reflection) if state.previous_reflection else None
        ),
        first_epoch=state.epoch + 1,
        instruction=Instruction.model_validate(state.instruction) if state.instruction else None,
        instruction_index=state.instruction_index, instruction_shaped=state.instruction_shaped,
    )  # fmt: skip
    for topic, body in state.pending_records:
        try:
            sender.send(decode([topic.encode(), body.encode()]))
        except BusDecodeError as exc:  # a checkpoint of another build: the orchestrator resends what it can decode
            log.warning("checkpoint_record_skipped", reason=exc.reason)
    best = best_epoch(carry.history, task.spec())
    if best is not None and best_held(cfg) != best.epoch and best.epoch == state.epoch:
        save_best(cfg, task, state, deltas)  # the run stopped between the two writes: the task holds that epoch now
    log.info("resumed", from_epoch=state.epoch, checkpoint=str(cfg.resume_from), hyperparameters=carry.hyperparameters,
             best_epoch=best_held(cfg))  # fmt: skip
    return carry


def best_held(cfg: TrainerConfig) -> int | None:
    """The epoch the run's best-epoch checkpoint holds, None when there is none (or it cannot be read)."""
    try:
        return read_state(best_path(cfg.checkpoint_file)).epoch
    except CheckpointError:
        return None


def save_best(cfg: TrainerConfig, task: Task, state: TrainingState, deltas: dict[str, torch.Tensor]) -> None:
    """The checkpoint of this epoch, the best so far, as the run's best (``trainer.checkpoint.best_path``)."""
    save_checkpoint(best_path(cfg.checkpoint_file), state, task, deltas)


def roll_back(cfg: TrainerConfig, task: Task, carry: Carry, epoch: int, log) -> int | None:
    """For a command with ``rollback`` after ``epoch``: restore the task to the best epoch so far (weights,
    optimizer, the task's RNGs; ``trainer.checkpoint.restore_best``) and return that epoch. The agent's checks
    already cleared a rollback with nothing to return to; the trainer does not trust the bus, so such a command,
    or a best checkpoint that does not hold the best epoch, restores nothing (None, logged)."""
    best = best_epoch(carry.history, task.spec())
    held = best_held(cfg)
    if best is None or best.epoch == epoch or held != best.epoch:
        log.warning("rollback_refused", epoch=epoch, best_epoch=best.epoch if best else None, checkpoint_epoch=held)
        return None
    restored = restore_best(best_path(cfg.checkpoint_file), cfg.run_id, task).epoch
    log.info("rolled_back", epoch=epoch, to_epoch=restored)
    return restored


def train_one_epoch(task: Task, epoch: int, carry: Carry) -> tuple[EpochResult, float]:
    """The task's epoch with the carried blend (each step adds ``delta / steps``, ``trainer.blend``) and its wall
    time (s). TaskContractError when the task's metrics break its declaration (``trainer.contract``)."""
    steps = task.steps_per_epoch() or carry.last_steps or 1
    task.optimizer.set_blend(carry.alpha, carry.deltas, steps)
    started = time.perf_counter()
    result = task.train_epoch(epoch)
    wall_s = time.perf_counter() - started
    result = check_epoch_result(task.spec(), result, epoch)
    carry.last_steps = result.steps or steps
    return result, wall_s


def epoch_metrics(cfg: TrainerConfig, task: Task, spec: TaskSpec, result: EpochResult, wall_s: float, carry: Carry):
    """The epoch's record and the agent's view of it (the summary is already in ``carry.history``)."""
    with torch.no_grad():
        weight_norms = {name: p.norm().item() for name, p in task.model.named_parameters()}
    detail = {
        "metrics": result.metrics, "vectors": result.vectors, "hyperparameters": carry.hyperparameters,
        "alpha": carry.alpha, "wall_s": wall_s, "grad_norms": result.grad_norms, "weight_norms": weight_norms,
    }  # fmt: skip
    record = EpochRecord(
        run_id=cfg.run_id, epoch=carry.history[-1].epoch, objective=result.metrics[spec.objective],
        **detail,
    )  # fmt: skip
    metrics = EpochMetrics(
        run_id=cfg.run_id, epoch=record.epoch, epochs_total=cfg.epochs, task=spec, regime=cfg.regime,
        budget=task.regimes[cfg.regime], param_shapes={n: list(p.shape) for n, p in task.model.named_parameters()},
        history=carry.history, previous_command=carry.previous_command,
        previous_reflection=carry.previous_reflection, instruction=carry.instruction,
        instruction_first_decision=not carry.instruction_shaped, **detail,
    )  # fmt: skip
    return record, metrics


def apply_decision(task: Task, carry: Carry, decision: Decision, new_deltas: dict[str, torch.Tensor]) -> None:
    """Use the decision's command from the next epoch on."""
    command = decision.command
    set_hyperparameters(task, command.hyperparameters)
    carry.hyperparameters = task.hyperparameter_values()
    carry.alpha, carry.deltas = command.alpha, new_deltas
    carry.previous_command = command


def settle(
    cfg: TrainerConfig, task: Task, carry: Carry, epoch: int, asked: EpochMetrics, decision: Decision,
    new_deltas: dict[str, torch.Tensor], waited_ms: float, records: list, log,
) -> int | None:
    """At the boundary after ``epoch``: record ``decision`` (asked for with ``asked``: this epoch's metrics in the
    synchronous protocol, an earlier epoch's in the asynchronous one) into ``records`` and, unless this is the last
    epoch, apply it from the next epoch on, rolling back first when it says so. Returns the epoch a rollback
    restored, else None."""
    charge(carry, asked.epoch, decision)  # what the run has spent, for its caps
    applied = epoch < cfg.epochs
    rollback_to = roll_back(cfg, task, carry, epoch, log) if applied and decision.command.rollback else None
    applied_epoch = epoch if applied and asked.epoch != epoch else None  # None: where it was asked (the row says so)
    records += decision_records(cfg, carry, asked.epoch, decision, applied, rollback_to, waited_ms,
                                asked.instruction, applied_epoch)  # fmt: skip
    # No reflection (a fallback epoch): no verdict to carry, not the stale one from before.
    carry.previous_reflection = decision.reflection
    if applied:
        apply_decision(task, carry, decision, new_deltas)
    return rollback_to


def charge(carry: Carry, epoch: int, decision: Decision) -> None:
    """Write the decision's model calls and cost into the history entry of the epoch it was asked for."""
    for index in range(len(carry.history) - 1, -1, -1):
        if carry.history[index].epoch == epoch:
            carry.history[index] = charged(carry.history[index], decision)
            return


def decide_async(
    cfg: TrainerConfig, task: Task, carry: Carry, epoch: int, channel: DecisionChannel, metrics: EpochMetrics,
    records: list, log,
) -> tuple[Decision | None, float, int | None]:
    """The asynchronous protocol at the boundary after ``epoch`` (``trainer.async_decisions``): settle the answer
    that arrived while the epoch trained (after the last epoch: wait for the one in flight, recorded as not
    applied), then ask about this epoch's state unless a request is still in flight (this epoch's metrics are then
    superseded, logged) or no command could take effect any more. Returns the decision settled (None: none
    arrived), the trainer's wait for it (ms) and the epoch a rollback restored."""
    last = epoch == cfg.epochs
    answer = channel.wait() if last else channel.answered()
    decision, rollback_to, blocked_ms = None, None, 0.0
    # What trained this epoch, for the reflector to judge (a command settled now has trained nothing yet).
    trained_with, its_verdict = carry.previous_command, carry.previous_reflection
    if answer is not None:
        log_outcome(log, answer.metrics.epoch, answer.outcome)
        decision, new_deltas = command_deltas(answer.outcome.decision, answer.metrics, cfg.controller, task.model,
                                              answer.outcome.waited_ms, log)  # fmt: skip
        blocked_ms = answer.blocked_ms
        rollback_to = settle(cfg, task, carry, epoch, answer.metrics, decision, new_deltas, blocked_ms, records, log)
    elif carry.deltas:  # a delta lasts one epoch
        carry.deltas = {}
    if epoch + 2 > cfg.epochs:  # answered during the next epoch at the earliest, it would apply after the last one
        return decision, blocked_ms, rollback_to
    if channel.in_flight is not None:
        log.info("request_superseded", epoch=epoch, in_flight=channel.in_flight.epoch)
        return decision, blocked_ms, rollback_to
    log.info("agent_asked", epoch=epoch)
    channel.ask(metrics.model_copy(update={
        "hyperparameters": dict(carry.hyperparameters), "alpha": carry.alpha,  # in force now, after the settle
        "previous_command": trained_with, "previous_reflection": its_verdict, "history": list(carry.history),
        "instruction_first_decision": not carry.instruction_shaped, "decisions": "async", "command_epoch": epoch + 2,
    }))  # fmt: skip
    return decision, blocked_ms, rollback_to


def save_and_send(cfg: TrainerConfig, task: Task, carry: Carry, epoch: int, sender: RecordSender, records) -> None:
    """The checkpoint first, then the records: every epoch in the database is one a resume continues after,
    and records the recorder has not confirmed travel in the checkpoint until it does."""
    unconfirmed = [m for m in sender.unacked() if not isinstance(m, LogEvent)] + records
    state = TrainingState(
        run_id=cfg.run_id, epoch=epoch, hyperparameters=carry.hyperparameters, alpha=carry.alpha,
        last_steps=carry.last_steps, history=[h.model_dump() for h in carry.history],
        previous_command=carry.previous_command.model_dump(mode="json") if carry.previous_command else None,
        previous_reflection=carry.previous_reflection.model_dump(mode="json") if carry.previous_reflection else None,
        instruction=carry.instruction.model_dump(mode="json") if carry.instruction else None,
        instruction_index=carry.instruction_index, instruction_shaped=carry.instruction_shaped,
        pending_records=[[f.decode() for f in encode(m)] for m in unconfirmed],
    )  # fmt: skip
    save_checkpoint(cfg.checkpoint_file, state, task, carry.deltas)
    best = best_epoch(carry.history, task.spec())
    if best is not None and best.epoch == epoch:  # after the epoch's own file: a resume can always redo this
        save_best(cfg, task, state, carry.deltas)
    for record in records:
        sender.send(record)


def run_epochs(
    cfg: TrainerConfig, task: Task, carry: Carry, agent, inbox: InstructionInbox, sender: RecordSender, log,
    orphaned: Callable[[], bool],
) -> int:
    """Epochs ``carry.first_epoch`` .. ``cfg.epochs``: train, ask, checkpoint, record, print; stop when
    ``orphaned()`` says the orchestrator is gone. An epoch whose metrics break the task's declaration is neither
    checkpointed nor recorded (TaskContractError)."""
    spec = task.spec()
    for epoch in range(carry.first_epoch, cfg.epochs + 1):
        if orphaned():
            log.error("orchestrator_gone", epoch=epoch)
            return EXIT_ORPHANED
        result, wall_s = train_one_epoch(task, epoch, carry)
        summary = EpochSummary(epoch=epoch, metrics=result.metrics, hyperparameters=carry.hyperparameters,
                               alpha=carry.alpha)  # fmt: skip
        carry.history.append(summary)
        said = inbox.updates(cfg.run_id, log)
        records: list = update_instruction(cfg, carry, epoch, said) if agent is not None else []
        record, metrics = epoch_metrics(cfg, task, spec, result, wall_s, carry)
        records.append(record)
        decision, waited_ms, rollback_to = None, 0.0, None
        if isinstance(agent, DecisionChannel):
            decision, waited_ms, rollback_to = decide_async(cfg, task, carry, epoch, agent, metrics, records, log)
        elif agent is not None:
            decision, new_deltas, waited_ms = ask_agent(agent, metrics, cfg.controller, task.model, log)
            rollback_to = settle(cfg, task, carry, epoch, metrics, decision, new_deltas, waited_ms, records, log)
        elif carry.deltas:  # a baseline never modulates; a delta lasts one epoch
            carry.deltas = {}
        save_and_send(cfg, task, carry, epoch, sender, records)
        rolled = f" | rolled back to epoch {rollback_to}" if rollback_to is not None else ""
        print(progress_line(cfg, spec, summary, decision, waited_ms, metrics.instruction) + rolled, flush=True)
        log.info(
            "epoch_done", epoch=epoch, objective=record.objective, wall_s=round(wall_s, 3),
            decision=decision is not None, reflection=decision is not None and decision.reflection is not None,
            waited_ms=round(waited_ms),
        )  # fmt: skip
    final = carry.history[-1].metrics.get(spec.objective) if carry.history else None
    log.info("training_finished", epochs=cfg.epochs, objective=spec.objective, final=final)
    return EXIT_OK


def train(cfg: TrainerConfig, child: Child) -> int:
    """The trainer's body under the child-process runtime (``bus.child``): set up the task, resume or start,
    connect to the agent, run the epochs."""
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = resolve_device(cfg.device)
        try:
            task = build_task(cfg, device, child.log)
        except DataUnavailableError as exc:  # one line naming the damaged file and what to do; no traceback
            child.log.error("data_unavailable", error=str(exc))
            print(f"trainer failed: {exc}", file=sys.stderr, flush=True)
            return EXIT_DATA_UNAVAILABLE
        if cfg.resume_from is not None:
            carry = resume(cfg, task, child.sender, device, child.log)
        else:
            carry = Carry(hyperparameters=task.hyperparameter_values(), alpha=cfg.alpha)
        agent = connect_agent(child, cfg, child.log)
        if agent is not None and cfg.decisions == "async":
            agent = DecisionChannel(agent, cfg.controller)
            child.on_close.append(agent.close)  # runs before the agent's sockets close (on_close runs in reverse)
        inbox = InstructionInbox(child, cfg.instruction_endpoint, cfg.run_id)
        child.log.info("training_started", task=cfg.task, regime=cfg.regime, epochs=cfg.epochs, device=str(device))
        return run_epochs(cfg, task, carry, agent, inbox, child.sender, child.log, child.orphaned)
    except TaskContractError as exc:  # the task's defect, not ours: one line saying what it broke, no traceback
        return child.fail(str(exc), EXIT_TASK_BROKEN, task=cfg.task)
    except Exception as exc:  # a task (maybe a user's) may raise anything: one line and a failed run, resumable
        return child.fail(f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))


def main(argv: list[str] | None = None) -> int:
    return run_child("trainer", TrainerConfig, train, argv, run_id=lambda cfg: cfg.run_id)
