"""The trainer process: trains one arm of a task, reports every epoch, asks the agent, applies its command.

Run as ``python -m trainer --config <run_dir>/<run_id>.trainer.json`` (the orchestrator does this). The
task (``tasks.registry``) owns data, model, optimizer and the epoch; this process owns the protocol:
checkpoint, records, the agent's decision, the blend of the next epoch.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch
import zmq

from bus.child import EXIT_DATA_UNAVAILABLE, EXIT_OK, EXIT_ORPHANED, Child, run_child
from bus.liveness import HealthCheck
from bus.messages import (
    Decision,
    DecisionRecord,
    EpochMetrics,
    EpochRecord,
    EpochSummary,
    ErrorReply,
    Hello,
    BusDecodeError,
    Instruction,
    InstructionRecord,
    InstructionUpdate,
    LogEvent,
    Ready,
    Reflection,
    ReflectionRecord,
    TaskSpec,
    UpdateCommand,
    decode,
    encode,
)
from bus.transport import RecordSender, RequestClient
from tasks.base import DataUnavailableError, EpochResult, Task
from tasks.registry import make_task
from trainer.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from trainer.config import ScheduledInstruction, TrainerConfig
from trainer.modulation import deltas_from_command


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch.cuda.is_available() is False")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def fallback_decision(metrics: EpochMetrics, controller: str, reason: str, waited_ms: float = 0.0) -> Decision:
    """Keep the current knob values with alpha = 0 and no modulation (ARCHITECTURE.md, the epoch protocol); its latency is the time
    the trainer spent waiting for the agent before falling back (ms)."""
    return Decision(
        run_id=metrics.run_id,
        epoch=metrics.epoch,
        controller=controller,
        command=UpdateCommand(hyperparameters=dict(metrics.hyperparameters), alpha=0.0, rationale=f"fallback: {reason}"),
        valid=False,
        fallback=True,
        fallback_reason=reason,
        latency_ms=waited_ms,
    )


def format_knobs(spec: TaskSpec, values: dict[str, float], alpha: float) -> str:
    """``learning_rate 1.00e-03 dropout 0.2 alpha 0.40``: log-scale knobs in scientific notation."""
    parts = [
        f"{k.name} {values[k.name]:.2e}" if k.scale == "log" else f"{k.name} {values[k.name]:.3g}"
        for k in spec.hyperparameters
        if k.name in values
    ]
    return " ".join([*parts, f"alpha {alpha:.2f}"])


def format_metrics(spec: TaskSpec, metrics: dict[str, float], others: int = 3) -> str:
    """The objective first, then up to ``others`` more metrics in the task's order, 4 significant digits."""
    names = [spec.objective, *[n for n in metrics if n != spec.objective][:others]]
    return " ".join(f"{n} {metrics.get(n, math.nan):.4g}" for n in names)


def progress_line(
    cfg: TrainerConfig, spec: TaskSpec, summary: EpochSummary, decision: Decision | None, waited_ms: float = 0.0,
    instruction: Instruction | None = None,
) -> str:
    """One terminal line per epoch; ``waited_ms`` is the time the trainer spent on the decision (retries and
    timeouts included), not the agent's own latency."""
    line = (
        f"{cfg.arm:<8} {cfg.task} {cfg.regime:>5} seed {cfg.seed} | epoch {summary.epoch:>3}/{cfg.epochs} | "
        f"{format_metrics(spec, summary.metrics)} | {format_knobs(spec, summary.hyperparameters, summary.alpha)}"
    )
    if decision is not None:
        c = decision.command
        how = "fallback" if decision.fallback else "valid" if decision.valid else f"repaired x{decision.repair_attempts}"
        verdict = f" | prev: {decision.reflection.verdict}" if decision.reflection else ""
        line += f" -> next {format_knobs(spec, c.hyperparameters, c.alpha)} [{how}, {waited_ms:.0f} ms]{verdict}"
    if instruction is not None:
        text = instruction.text if len(instruction.text) <= 40 else instruction.text[:37] + "..."
        line += f" | instruction: {text!r}"
    return line


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
    """The configured task, set up for the run's regime and seed, with the initial knob values applied.
    Raises UnknownTaskError / ValueError for a bad task, regime or knob, DataUnavailableError for data."""
    task = make_task(cfg.task, cfg.task_options)
    task.set_event_sink(lambda level, event, data: getattr(log, level, log.info)(event, **data))
    task.setup(cfg.regime, cfg.seed, device)
    if cfg.hyperparameters:
        check_hyperparameters(task.spec(), cfg.hyperparameters)
        task.set_hyperparameters(cfg.hyperparameters)
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
        sender.send(decode([topic.encode(), body.encode()]))
    log.info("resumed", from_epoch=state.epoch, checkpoint=str(cfg.resume_from), hyperparameters=carry.hyperparameters)
    return carry


def connect_agent(child: Child, cfg: TrainerConfig, log) -> RequestClient | None:
    """The agent client (None for the baseline arm), after the handshake; its sockets close at shutdown."""
    if not cfg.agent_endpoint:
        return None
    health = None
    if cfg.agent_health_endpoint:
        health = HealthCheck(child.ctx, cfg.agent_health_endpoint)
        child.on_close.append(health.close)
    agent = RequestClient(child.ctx, cfg.agent_endpoint, cfg.agent_timeout_ms, cfg.agent_retries, health)
    child.on_close.append(agent.close)
    hello = agent.request(Hello(run_id=cfg.run_id, component="trainer"), timeout_ms=cfg.handshake_timeout_ms)
    if isinstance(hello.reply, Ready):
        log.info("agent_handshake", agent_pid=hello.reply.pid, attempts=hello.attempts)
    else:
        reason = hello.error or f"agent answered {type(hello.reply).__name__}"
        log.warning("agent_handshake_failed", error=reason, attempts=hello.attempts)
    return agent


def active_entry(schedule: list[ScheduledInstruction], epoch: int) -> int | None:
    """The index of the schedule entry in force for the decision after ``epoch``: the last one due by then."""
    due = [i for i, entry in enumerate(schedule) if entry.from_epoch <= epoch]
    return due[-1] if due else None


class InstructionInbox:
    """The trainer's PULL socket for instructions given during the run (``run.py say``, pushed by the
    orchestrator); without an endpoint it is always empty."""

    def __init__(self, child: Child, endpoint: str | None):
        self.socket = None
        if endpoint is not None:
            self.socket = child.ctx.socket(zmq.PULL)
            self.socket.setsockopt(zmq.LINGER, 0)
            child.on_close.append(self.socket.close)
            self.socket.bind(endpoint)

    def updates(self, run_id: str, log) -> list[InstructionUpdate]:
        """Every update waiting now for this run, oldest first; anything else is logged and dropped."""
        found = []
        while self.socket is not None and self.socket.poll(0, zmq.POLLIN):
            try:
                update = decode(self.socket.recv_multipart())
            except BusDecodeError as exc:
                log.warning("bad_frame", reason=exc.reason, socket="instructions")
                continue
            if isinstance(update, InstructionUpdate) and update.run_id == run_id:
                found.append(update)
            else:
                log.warning("bad_frame", reason=f"not an instruction for {run_id}: {update.TOPIC}", socket="instructions")
        return found


def update_instruction(cfg: TrainerConfig, carry: Carry, epoch: int, said: list[InstructionUpdate]) -> list:
    """Make the instruction in force for this epoch's decision the active one — the scheduled one due now, then
    what was said since the last decision (the latest wins) — and return the record of a new one."""
    index = active_entry(cfg.instructions, epoch)
    changed = index != carry.instruction_index
    if changed:
        carry.instruction_index = index
        entry = cfg.instructions[index] if index is not None else None
        carry.instruction = None
        if entry is not None and entry.text is not None:  # else nothing given yet, or withdrawn
            carry.instruction = Instruction(instruction_id=f"{cfg.run_id}-{index}", text=entry.text,
                                            source=entry.source, received_at=time.time())  # fmt: skip
    if said:
        changed, carry.instruction = True, said[-1].instruction
    if not changed:
        return []
    carry.instruction_shaped = False
    return [InstructionRecord(run_id=cfg.run_id, instruction=carry.instruction)] if carry.instruction else []


def decision_records(cfg: TrainerConfig, carry: Carry, epoch: int, decision: Decision, applied: bool) -> list:
    """The records of one decision: the instruction's first shaped epoch (only for a decision that read it — a
    fallback did not, so the instruction is still to be carried out at the next one), the decision naming the
    instruction in force, and the reflection it carried."""
    records: list = [] if decision.fallback else shaped_record(cfg, carry, epoch)
    instruction_id = carry.instruction.instruction_id if carry.instruction else None
    records.append(DecisionRecord(decision=decision, applied=applied, instruction_id=instruction_id))
    if decision.reflection is not None:
        records.append(ReflectionRecord(run_id=cfg.run_id, reflection=decision.reflection))
    return records


def shaped_record(cfg: TrainerConfig, carry: Carry, epoch: int) -> list[InstructionRecord]:
    """The instruction's record with ``first_epoch``, once: when the first decision is made with it."""
    if carry.instruction is None or carry.instruction_shaped:
        return []
    carry.instruction_shaped = True
    return [InstructionRecord(run_id=cfg.run_id, instruction=carry.instruction, first_epoch=epoch)]


def train_one_epoch(task: Task, epoch: int, carry: Carry) -> tuple[EpochResult, float]:
    """The task's epoch with the carried blend: each step adds ``delta / steps`` (``trainer.blend``)."""
    steps = task.steps_per_epoch() or carry.last_steps or 1
    task.optimizer.set_blend(carry.alpha, carry.deltas, steps)
    started = time.perf_counter()
    result = task.train_epoch(epoch)
    carry.last_steps = result.steps or steps
    return result, time.perf_counter() - started


def epoch_metrics(cfg: TrainerConfig, task: Task, spec: TaskSpec, result: EpochResult, wall_s: float, carry: Carry):
    """The epoch's record and the agent's view of it (the summary is already in ``carry.history``)."""
    with torch.no_grad():
        weight_norms = {name: p.norm().item() for name, p in task.model.named_parameters()}
    detail = {
        "metrics": result.metrics, "vectors": result.vectors, "hyperparameters": carry.hyperparameters,
        "alpha": carry.alpha, "wall_s": wall_s, "grad_norms": result.grad_norms, "weight_norms": weight_norms,
    }  # fmt: skip
    record = EpochRecord(
        run_id=cfg.run_id, epoch=carry.history[-1].epoch, objective=result.metrics.get(spec.objective, math.nan),
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
    task.set_hyperparameters(command.hyperparameters)
    carry.hyperparameters = task.hyperparameter_values()
    carry.alpha, carry.deltas = command.alpha, new_deltas
    carry.previous_command = command


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
    for record in records:
        sender.send(record)


def run_epochs(
    cfg: TrainerConfig, task: Task, carry: Carry, agent, inbox: InstructionInbox, sender: RecordSender, log, parent: int
) -> int:
    """Epochs ``carry.first_epoch`` .. ``cfg.epochs``: train, ask, checkpoint, record, print."""
    spec = task.spec()
    for epoch in range(carry.first_epoch, cfg.epochs + 1):
        if os.getppid() != parent:
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
        decision, waited_ms = None, 0.0
        if agent is not None:
            asked = time.perf_counter()
            decision, new_deltas = ask_agent(agent, metrics, cfg.controller, task.model, log)
            waited_ms = (time.perf_counter() - asked) * 1000.0
            applied = epoch < cfg.epochs
            records += decision_records(cfg, carry, epoch, decision, applied)
            # No reflection (a fallback epoch): no verdict to carry, not the stale one from before.
            carry.previous_reflection = decision.reflection
            if applied:
                apply_decision(task, carry, decision, new_deltas)
        elif carry.deltas:  # a baseline never modulates; a delta lasts one epoch
            carry.deltas = {}
        save_and_send(cfg, task, carry, epoch, sender, records)
        print(progress_line(cfg, spec, summary, decision, waited_ms, metrics.instruction), flush=True)
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
        inbox = InstructionInbox(child, cfg.instruction_endpoint)
        child.log.info("training_started", task=cfg.task, regime=cfg.regime, epochs=cfg.epochs, device=str(device))
        return run_epochs(cfg, task, carry, agent, inbox, child.sender, child.log, child.parent)
    except Exception as exc:  # a task (maybe a user's) may raise anything: one line and a failed run, resumable
        return child.fail(f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))


def check_hyperparameters(spec: TaskSpec, values: dict[str, float]) -> None:
    """The trainer never trusts the bus: ValueError for a knob the task does not declare or a value outside
    its hard bounds (the agent's validator clamps into them, so this means a defect or a foreign peer)."""
    for name, value in values.items():
        try:
            knob = spec.knob(name)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        knob.check(value)


def ask_agent(
    agent: RequestClient, metrics: EpochMetrics, controller: str, model, log
) -> tuple[Decision, dict[str, torch.Tensor]]:
    """The agent's decision for this epoch, or a recorded fallback if it fails to give a usable one."""
    log.info("agent_asked", epoch=metrics.epoch)
    started = time.perf_counter()
    outcome = agent.request(metrics)
    waited_ms = (time.perf_counter() - started) * 1000.0
    reply = outcome.reply
    if reply is not None and outcome.attempts > 1:  # an agent that died mid-request and was restarted, say
        log.warning("agent_retried", epoch=metrics.epoch, attempts=outcome.attempts)
    if reply is None:
        reason = f"agent: {outcome.error} after {outcome.attempts} attempt(s)"
    elif isinstance(reply, ErrorReply):
        reason = f"agent error: {reply.reason}"
    elif not isinstance(reply, Decision) or (reply.run_id, reply.epoch) != (metrics.run_id, metrics.epoch):
        reason = f"agent answered {type(reply).__name__} for another request"
    else:
        try:
            check_hyperparameters(metrics.task, reply.command.hyperparameters)
            return reply, deltas_from_command(reply.command, model)
        except (ValueError, TypeError, RuntimeError) as exc:  # e.g. a delta of strings that pydantic let through
            reason = f"trainer refused the command: {exc}"
    log.warning("fallback", epoch=metrics.epoch, reason=reason, waited_ms=round(waited_ms))
    return fallback_decision(metrics, controller, reason, waited_ms), {}


def main(argv: list[str] | None = None) -> int:
    return run_child("trainer", TrainerConfig, train, argv, run_id=lambda cfg: cfg.run_id)
