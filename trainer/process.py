"""The trainer process: trains one arm, reports every epoch, asks the agent, applies its command.

Run as ``python -m trainer --config <run_dir>/<run_id>.trainer.json`` (run.py does this).
"""

from __future__ import annotations

import os
import sys
import time

import torch
import zmq

from bus.lifecycle import Stop, ignore_signals, read_config, stop_on_signals, stop_when_orphaned
from bus.liveness import HealthCheck
from bus.log import configure_logging
from bus.messages import (
    Decision,
    DecisionRecord,
    EpochMetrics,
    EpochRecord,
    EpochSummary,
    ErrorReply,
    Hello,
    LogEvent,
    Ready,
    Reflection,
    ReflectionRecord,
    UpdateCommand,
    decode,
    encode,
)
from bus.transport import RecordSender, RequestClient
from trainer.checkpoint import CheckpointError, TrainingState, load_checkpoint, save_checkpoint
from trainer.config import TrainerConfig
from trainer.data import DataUnavailableError, load_mnist, stratified_subset
from trainer.defaults import EXIT_DATA_UNAVAILABLE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_ORPHANED
from trainer.loop import (
    EVAL_BATCH,
    EvalStats,
    TrainStats,
    compile_for_eval,
    evaluate,
    make_optimizer,
    to_model_input,
    train_epoch,
    weight_norms,
)
from trainer.model import ReflectCNN
from trainer.modulation import deltas_from_command


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch.cuda.is_available() is False")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def fallback_decision(metrics: EpochMetrics, controller: str, reason: str, waited_ms: float = 0.0) -> Decision:
    """Keep the current hyperparameters with alpha = 0 and no modulation (DESIGN.md); its latency is the
    time the trainer spent waiting for the agent before falling back (ms)."""
    return Decision(
        run_id=metrics.run_id,
        epoch=metrics.epoch,
        controller=controller,
        command=UpdateCommand(
            dropout=metrics.dropout, learning_rate=metrics.lr, alpha=0.0, rationale=f"fallback: {reason}"
        ),
        valid=False,
        fallback=True,
        fallback_reason=reason,
        latency_ms=waited_ms,
    )


def progress_line(
    cfg: TrainerConfig,
    epoch: int,
    tr: TrainStats,
    ev: EvalStats,
    lr: float,
    dropout: float,
    alpha: float,
    decision: Decision | None,
    waited_ms: float = 0.0,
) -> str:
    """One terminal line per epoch; ``waited_ms`` is the time the trainer spent on the decision (retries and
    timeouts included), not the agent's own latency."""
    line = (
        f"{cfg.arm:<8} {cfg.regime:>5} seed {cfg.seed} | epoch {epoch:>3}/{cfg.epochs} | "
        f"train acc {tr.acc:.4f} loss {tr.loss:.4f} | val acc {ev.acc:.4f} loss {ev.loss:.4f} | "
        f"lr {lr:.2e} dropout {dropout:.2f} alpha {alpha:.2f}"
    )
    if decision is not None:
        c = decision.command
        how = (
            "fallback"
            if decision.fallback
            else ("valid" if decision.valid else f"repaired x{decision.repair_attempts}")
        )
        verdict = f" | prev: {decision.reflection.verdict}" if decision.reflection else ""
        line += f" -> next lr {c.learning_rate:.2e} dropout {c.dropout:.2f} alpha {c.alpha:.2f} [{how}, {waited_ms:.0f} ms]{verdict}"
    return line


def run(cfg: TrainerConfig) -> int:
    ctx = zmq.Context()
    sender = RecordSender(ctx, cfg.recorder_endpoint)
    log = configure_logging("trainer", cfg.run_dir / "logs", forward=sender.send, run_id=cfg.run_id)
    agent: RequestClient | None = None
    health: HealthCheck | None = None
    parent = os.getppid()

    stop_on_signals()
    stop_when_orphaned()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = resolve_device(cfg.device)
        try:
            data = load_mnist(cfg.data_dir)
        except DataUnavailableError as exc:  # one line naming the damaged file and what to do; no traceback
            log.error("data_unavailable", error=str(exc))
            print(f"trainer failed: {exc}", file=sys.stderr, flush=True)
            return EXIT_DATA_UNAVAILABLE
        for repair in data.repairs:
            log.warning(
                "data_cache_repaired", file=str(repair.path), problem=repair.problem,
                moved_to=str(repair.moved_to) if repair.moved_to else None, source=data.source,
            )  # fmt: skip
            moved = f", moved to {repair.moved_to.name}" if repair.moved_to else ""
            print(
                f"trainer: MNIST cache file {repair.path} {repair.problem}{moved}; using {data.source}", file=sys.stderr
            )
        log.info("data_loaded", source=data.source, device=str(device))
        subset = stratified_subset(data.train_labels, cfg.n_train, cfg.seed)
        train_x = to_model_input(data.train_images[subset], device)
        train_y = data.train_labels[subset].to(device)
        val_x = to_model_input(data.test_images, device)
        val_y = data.test_labels.to(device)
        del data

        # Same seed -> same initial weights, batch order and dropout masks in both arms of a pair.
        torch.manual_seed(cfg.seed)
        model = ReflectCNN(cfg.dropout).to(device=device, memory_format=torch.channels_last)
        optimizer = make_optimizer(model, cfg.learning_rate)
        forward = model
        if cfg.compile_eval:
            started = time.perf_counter()
            forward, failure = compile_for_eval(
                model,
                val_x[:EVAL_BATCH],
                on_fallback=lambda reason: log.warning("eval_fell_back_to_eager", error=reason),
            )
            log.info(
                "eval_compiled" if failure is None else "eval_compile_failed",
                error=failure,
                seconds=round(time.perf_counter() - started, 2),
            )
        order_rng = torch.Generator().manual_seed(cfg.seed)
        param_shapes = {name: list(p.shape) for name, p in model.named_parameters()}

        lr, dropout, alpha = cfg.learning_rate, cfg.dropout, cfg.alpha
        deltas: dict[str, torch.Tensor] = {}
        history: list[EpochSummary] = []
        previous_command = previous_reflection = None
        first_epoch = 1
        if cfg.resume_from is not None:
            state, deltas = load_checkpoint(cfg.resume_from, cfg.run_id, model, optimizer, order_rng, device)
            lr, dropout, alpha = state.lr, state.dropout, state.alpha
            model.dropout = dropout
            history = [EpochSummary.model_validate(h) for h in state.history]
            previous_command = UpdateCommand.model_validate(state.previous_command) if state.previous_command else None
            previous_reflection = (
                Reflection.model_validate(state.previous_reflection) if state.previous_reflection else None
            )
            for topic, body in state.pending_records:  # the recorder may not have them; it stores each once
                sender.send(decode([topic.encode(), body.encode()]))
            first_epoch = state.epoch + 1
            log.info("resumed", from_epoch=state.epoch, checkpoint=str(cfg.resume_from), lr=lr, dropout=dropout)

        if cfg.agent_endpoint:
            if cfg.agent_health_endpoint:  # after a timeout, retry only an agent that is alive and not stuck
                health = HealthCheck(ctx, cfg.agent_health_endpoint)
            agent = RequestClient(ctx, cfg.agent_endpoint, cfg.agent_timeout_ms, cfg.agent_retries, health)
            hello = agent.request(Hello(run_id=cfg.run_id, component="trainer"), timeout_ms=cfg.handshake_timeout_ms)
            if isinstance(hello.reply, Ready):
                log.info("agent_handshake", agent_pid=hello.reply.pid, attempts=hello.attempts)
            else:
                reason = hello.error or f"agent answered {type(hello.reply).__name__}"
                log.warning("agent_handshake_failed", error=reason, attempts=hello.attempts)

        log.info("training_started", n_train=len(train_x), epochs=cfg.epochs, batch_size=cfg.batch_size)
        for epoch in range(first_epoch, cfg.epochs + 1):
            if os.getppid() != parent:
                log.error("orchestrator_gone", epoch=epoch)
                return EXIT_ORPHANED
            started = time.perf_counter()
            tr = train_epoch(model, optimizer, train_x, train_y, cfg.batch_size, order_rng, alpha, deltas)
            ev = evaluate(model, val_x, val_y, forward=forward)
            wall_s = time.perf_counter() - started
            norms = weight_norms(model)
            summary = EpochSummary(
                epoch=epoch, train_loss=tr.loss, train_acc=tr.acc, val_loss=ev.loss, val_acc=ev.acc,
                lr=lr, dropout=dropout, alpha=alpha,
            )  # fmt: skip
            detail = {
                "wall_s": wall_s,
                "per_class_val_acc": ev.per_class_acc,
                "grad_norms": tr.grad_norms,
                "weight_norms": norms,
            }
            records: list = [EpochRecord(run_id=cfg.run_id, **summary.model_dump(), **detail)]
            history.append(summary)
            decision, waited_ms = None, 0.0
            if agent is not None or cfg.replay_commands is not None:
                metrics = EpochMetrics(
                    run_id=cfg.run_id, epochs_total=cfg.epochs, regime=cfg.regime, n_train=len(train_x),
                    param_shapes=param_shapes, history=history, previous_command=previous_command,
                    previous_reflection=previous_reflection, **summary.model_dump(), **detail,
                )  # fmt: skip
                asked = time.perf_counter()
                if agent is not None:
                    decision, new_deltas = ask_agent(agent, metrics, cfg.controller, model, log)
                else:
                    decision, new_deltas = replay_decision(cfg.replay_commands, metrics, model, log)
                waited_ms = (time.perf_counter() - asked) * 1000.0
                applied = epoch < cfg.epochs
                records.append(DecisionRecord(decision=decision, applied=applied))
                if decision.reflection is not None:
                    records.append(ReflectionRecord(run_id=cfg.run_id, reflection=decision.reflection))
                # No reflection (a fallback epoch): no verdict to carry, not the stale one from before.
                previous_reflection = decision.reflection
                if applied:
                    command = decision.command
                    lr, dropout, alpha, deltas = command.learning_rate, command.dropout, command.alpha, new_deltas
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    model.dropout = dropout
                    previous_command = command
            # The checkpoint first, then the records: every epoch in the database is one a resume continues
            # after, and records the recorder has not confirmed travel in the checkpoint until it does.
            unconfirmed = [m for m in sender.unacked() if not isinstance(m, LogEvent)] + records
            state = TrainingState(
                run_id=cfg.run_id, epoch=epoch, lr=lr, dropout=dropout, alpha=alpha,
                history=[h.model_dump() for h in history],
                previous_command=previous_command.model_dump(mode="json") if previous_command else None,
                previous_reflection=previous_reflection.model_dump(mode="json") if previous_reflection else None,
                pending_records=[[f.decode() for f in encode(m)] for m in unconfirmed],
            )  # fmt: skip
            save_checkpoint(cfg.checkpoint_file, state, model, optimizer, deltas, order_rng)
            for record in records:
                sender.send(record)
            print(
                progress_line(
                    cfg, epoch, tr, ev, history[-1].lr, history[-1].dropout, history[-1].alpha, decision, waited_ms
                ),
                flush=True,
            )
            log.info(
                "epoch_done", epoch=epoch, val_acc=ev.acc, train_acc=tr.acc, wall_s=round(wall_s, 3),
                decision=decision is not None, reflection=decision is not None and decision.reflection is not None,
                waited_ms=round(waited_ms),
            )  # fmt: skip
        log.info("training_finished", epochs=cfg.epochs, final_val_acc=history[-1].val_acc if history else None)
        return EXIT_OK
    except Stop as stop:
        if os.getppid() != parent:
            log.error("orchestrator_gone")
            return EXIT_ORPHANED
        log.warning("trainer_stopped", signal=str(stop))
        return EXIT_INTERRUPTED
    except (DataUnavailableError, CheckpointError, ValueError, RuntimeError, OSError) as exc:
        log.error("trainer_failed", error=f"{type(exc).__name__}: {exc}")
        print(f"trainer failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        ignore_signals()
        if agent is not None:
            agent.close()
        if health is not None:
            health.close()
        # Wait for the recorder to confirm (a restarted one gets resends); orphaned, the recorder is gone too and
        # what is unconfirmed is in the checkpoint.
        lost = sender.close(timeout_s=10.0 if os.getppid() == parent else 0.5)
        if lost:
            print(f"trainer: {lost} message(s) not acknowledged by the recorder", file=sys.stderr, flush=True)
        ctx.term()


def replay_decision(
    commands: dict[int, UpdateCommand], metrics: EpochMetrics, model, log
) -> tuple[Decision, dict[str, torch.Tensor]]:
    """The recorded command for this epoch, applied again with no model call."""
    command = commands.get(metrics.epoch)
    if command is None:
        log.warning("fallback", epoch=metrics.epoch, reason="no recorded command for this epoch")
        return fallback_decision(metrics, "replay", "no recorded command for this epoch"), {}
    decision = Decision(run_id=metrics.run_id, epoch=metrics.epoch, controller="replay", command=command)
    return decision, deltas_from_command(command, model)


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
            return reply, deltas_from_command(reply.command, model)
        except (ValueError, TypeError, RuntimeError) as exc:  # e.g. a delta of strings that pydantic let through
            reason = f"trainer refused the command: {exc}"
    log.warning("fallback", epoch=metrics.epoch, reason=reason, waited_ms=round(waited_ms))
    return fallback_decision(metrics, controller, reason, waited_ms), {}


def main(argv: list[str] | None = None) -> int:
    return run(read_config(TrainerConfig, "python -m trainer", "ReflectNet trainer process", argv))
