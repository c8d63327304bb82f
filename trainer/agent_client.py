"""The trainer's side of the agent: the handshake, one decision per epoch, and the recorded fallback when the agent
gives none it can use (ARCHITECTURE.md, the epoch protocol)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bus.child import Child
from bus.liveness import HealthCheck
from bus.messages import Decision, EpochMetrics, EpochSummary, ErrorReply, Hello, Ready, UpdateCommand
from bus.transport import RequestClient
from trainer.config import TrainerConfig
from trainer.contract import check_hyperparameters
from trainer.modulation import deltas_from_command


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


@dataclass(frozen=True)
class DecisionOutcome:
    """One request's result: the agent's decision, or the recorded fallback (``fallback_reason`` says why); the
    trainer's wait for it, ms, from request sent (retries and timeouts included) to answer or fallback; the tries."""

    decision: Decision
    waited_ms: float
    attempts: int
    replied: bool = True  # the agent answered something (a decision, or an error), at the last try

def request_decision(
    agent: RequestClient, metrics: EpochMetrics, controller: str, cancelled: Callable[[], bool] | None = None
) -> DecisionOutcome:
    """The agent's checked decision for ``metrics``, or a fallback when it gives none the trainer can use. Logs
    nothing, so it may run on a thread of its own (``trainer.async_decisions``: the log forwards to the recorder's
    socket, which belongs to the main thread); :func:`log_outcome` logs it. ``cancelled``: see
    ``RequestClient.request``."""
    started = time.perf_counter()
    outcome = agent.request(metrics, cancelled=cancelled)
    waited_ms = (time.perf_counter() - started) * 1000.0
    reply = outcome.reply
    if reply is None:
        reason = f"agent: {outcome.error} after {outcome.attempts} attempt(s)"
    elif isinstance(reply, ErrorReply):
        reason = f"agent error: {reply.reason}"
    elif not isinstance(reply, Decision) or (reply.run_id, reply.epoch) != (metrics.run_id, metrics.epoch):
        reason = f"agent answered {type(reply).__name__} for another request"
    else:
        try:
            check_hyperparameters(metrics.task, reply.command.hyperparameters)
            return DecisionOutcome(reply, waited_ms, outcome.attempts)
        except (ValueError, TypeError, RuntimeError) as exc:  # e.g. a value pydantic let through
            reason = f"trainer refused the command: {exc}"
    return DecisionOutcome(fallback_decision(metrics, controller, reason, waited_ms), waited_ms, outcome.attempts,
                           replied=reply is not None)


def log_outcome(log, epoch: int, outcome: DecisionOutcome) -> None:
    """The trainer's log lines for one request: a retry that succeeded, or the fallback and why."""
    if outcome.replied and outcome.attempts > 1:  # an agent that died mid-request and was restarted, say
        log.warning("agent_retried", epoch=epoch, attempts=outcome.attempts)
    if outcome.decision.fallback:
        log.warning("fallback", epoch=epoch, reason=outcome.decision.fallback_reason,
                    waited_ms=round(outcome.waited_ms))  # fmt: skip


def command_deltas(
    decision: Decision, metrics: EpochMetrics, controller: str, model, waited_ms: float, log
) -> tuple[Decision, dict[str, torch.Tensor]]:
    """The decision with its weight deltas for ``model`` as it is now (``trainer.modulation``), or a fallback (logged,
    with the trainer's wait ``waited_ms``) when they cannot be made: names, shapes, finiteness are checked here, since
    the trainer never trusts the bus."""
    if decision.fallback:
        return decision, {}
    try:
        return decision, deltas_from_command(decision.command, model)
    except (ValueError, TypeError, RuntimeError) as exc:  # e.g. a delta of strings that pydantic let through
        reason = f"trainer refused the command: {exc}"
    log.warning("fallback", epoch=decision.epoch, reason=reason, waited_ms=round(waited_ms))
    return fallback_decision(metrics, controller, reason, waited_ms), {}


def ask_agent(
    agent: RequestClient, metrics: EpochMetrics, controller: str, model, log
) -> tuple[Decision, dict[str, torch.Tensor], float]:
    """The synchronous protocol: the agent's decision for this epoch, or a recorded fallback if it fails to give a
    usable one; its deltas; and the trainer's wait for it, ms (``decisions.wait_ms``)."""
    log.info("agent_asked", epoch=metrics.epoch)
    outcome = request_decision(agent, metrics, controller)
    log_outcome(log, metrics.epoch, outcome)
    decision, deltas = command_deltas(outcome.decision, metrics, controller, model, outcome.waited_ms, log)
    return decision, deltas, outcome.waited_ms


def charged(summary: EpochSummary, decision: Decision) -> EpochSummary:
    """The epoch's history entry with the model calls and cost of the decision made after it, which the agent
    sums to keep the run within its caps (``agents.usage``); a trainer's fallback adds nothing (unknown)."""
    return summary.model_copy(update={"llm_calls": decision.llm_calls or 0, "llm_cost_usd": decision.cost_usd or 0.0})
