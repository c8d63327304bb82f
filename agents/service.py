"""The agent process: a REP server that answers each ``EpochMetrics`` with a ``Decision``.

Requests are idempotent: the same (run_id, epoch) asked twice — a trainer retrying after a timeout
— gets the cached decision, not a second model call.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import OrderedDict
from typing import TYPE_CHECKING

import zmq

from agents.config import AgentConfig
from agents.controllers.contract import Policy
from agents.controllers.registry import resolve_controller
from agents.expert.outcome import held, instruction_outcome
from agents.expert.reading import warm_up as warm_up_reader
from agents.graph import build_agent_graph
from agents.nodes.guard import guard
from agents.usage import CAP_REASONS, CallMeter, run_spending
from bus.child import EXIT_BIND_FAILED, EXIT_CONFIG_INVALID, EXIT_OK, EXIT_ORPHANED, Child, run_child
from bus.liveness import BusyClock, HealthResponder
from bus.messages import BusDecodeError, Decision, EpochMetrics, ErrorReply, Hello, Message, Ready, decode, encode

if TYPE_CHECKING:
    from agents.controllers.llm import LLMJudge


def make_policy_and_judge(cfg: AgentConfig) -> tuple[Policy, LLMJudge | None]:
    """The controller's policy and judge (or None), from the registry (``agents.controllers``)."""
    return resolve_controller(cfg.controller).build(cfg)


def instruction_fields(metrics: EpochMetrics, command, notes: list[dict]) -> tuple[str | None, bool | None]:
    """``instruction_outcome`` and ``held`` of ``command``; (None, None) with a note if they cannot be worked out:
    this bookkeeping must never cost the validated command."""
    try:
        return instruction_outcome(metrics, command), held(metrics, command)
    except Exception as exc:  # the lexicon reads user text: whatever it raises is a note, not a lost decision
        notes.append({"node": "decide", "action": "outcome_failed", "error": f"{type(exc).__name__}: {exc}"[:500]})
        return None, None


# The controller whose commands are not guarded: a replay answers a recorded run's commands again, exactly, so that
# the two runs can be compared move for move; they were guarded when first decided (or recorded before the guard,
# and then a guarded replay would not be a replay).
UNGUARDED = ("replay",)


def guarded_state(state: dict, policy_name: str) -> dict:
    """``state`` after the instruction guard (``agents.nodes.guard``), which runs here, after every node of any
    pipeline, so that nothing between the policy and the trainer can move a knob against a confident reading."""
    if policy_name in UNGUARDED:
        return state
    update = guard(state)
    return {**state, **update, "notes": [*state.get("notes", []), *update.get("notes", [])]}


def decision_usage(state: dict, meter: CallMeter | None, notes: list[dict]) -> dict:
    """The decision's model calls, tokens and cost, from ``meter`` (every call of the built-in model callers,
    ``agents.usage``), or, for a policy without one, the tokens it reported itself (calls and cost then unknown,
    or 0 when it reported none). A cap that refused a call is noted in ``notes``."""
    if meter is None:
        tokens = (state.get("prompt_tokens"), state.get("completion_tokens"))
        unknown = tokens != (None, None)
        return {"prompt_tokens": tokens[0], "completion_tokens": tokens[1], "llm_calls": None if unknown else 0,
                "cost_usd": None if unknown else 0.0}  # fmt: skip
    if meter.refused is not None:
        notes.append({"node": "decide", "action": "llm_cap", "reason": meter.refused, "run_calls_before":
                      meter.calls_before, "run_cost_before_usd": meter.cost_before_usd})  # fmt: skip
    return {"prompt_tokens": meter.prompt_tokens, "completion_tokens": meter.completion_tokens,
            "llm_calls": meter.calls, "cost_usd": meter.cost_usd}  # fmt: skip


def decide(
    graph,
    policy_name: str,
    metrics: EpochMetrics,
    max_repairs: int,
    feed_reflection: bool = True,
    command_space: str = "free",
    meter: CallMeter | None = None,
) -> Decision:
    """Run the graph once for ``metrics``, guard its command against the instruction in force
    (:func:`guarded_state`) and package the outcome as a Decision. ``meter`` (the policy's, ``agents.usage``) is
    opened with what the run has spent so far (``metrics.history``), so that a call beyond the run's caps is not
    made; a decision that fell back because a cap refused a call says so as its ``fallback_reason``
    (``llm_call_cap`` or ``llm_cost_cap``)."""
    if meter is not None:
        meter.open(*run_spending(metrics.history))
    started = time.perf_counter()
    inputs = {"metrics": metrics, "max_repairs": max_repairs, "feed_reflection": feed_reflection, "notes": []}
    # Each repair round is three steps; langgraph's default step limit differs between versions.
    limit = 3 * (max_repairs + 1) + len(graph.nodes) + 10
    state = graph.invoke({**inputs, "command_space": command_space}, {"recursion_limit": limit})
    state = guarded_state(state, policy_name)
    latency_ms = (time.perf_counter() - started) * 1000.0
    fallback = bool(state.get("fallback"))
    command = state["command"]
    notes = list(state.get("notes", []))
    proposal = None if fallback else state.get("proposal")  # the applied answer's, when a policy typed it
    overridden = state.get("overridden")
    outcome, held_still = (None, None) if fallback else instruction_fields(metrics, command, notes)
    if overridden is not None:
        outcome = "overridden"  # whatever the applied command does, the policy's own proposal went against the user
    usage = decision_usage(state, meter, notes)
    fallback_reason = state.get("fallback_reason")
    if fallback and meter is not None and meter.refused is not None:
        fallback_reason = meter.refused  # the model was not asked (again): the cap, not the model, is the reason
    return Decision(
        run_id=metrics.run_id,
        epoch=metrics.epoch,
        controller=policy_name,
        command=command,
        prompt=state.get("prompt", ""),
        raw_output=state.get("raw_output", ""),
        valid=state.get("attempts", 0) == 1 and not fallback,
        repair_attempts=state.get("repair_attempts", 0),
        fallback=fallback,
        fallback_reason=fallback_reason,
        clamped=state.get("clamped", {}),
        notes=notes,
        instruction_outcome=outcome,
        held=held_still,
        overridden_proposal=overridden,
        choice=proposal.choice if proposal is not None else None,
        choice_margin=None if proposal is None or proposal.margin is None else round(proposal.margin, 4),
        latency_ms=latency_ms,
        **usage,
        reflection=state.get("reflection"),
    )


class DecisionService:
    """Answers the trainer's requests: ``Hello`` with ``Ready``, ``EpochMetrics`` with a ``Decision`` (cached
    per (run_id, epoch), so a retried request costs no second model call), anything else with ``ErrorReply``."""

    def __init__(self, cfg: AgentConfig, log, clock: BusyClock):
        self.cfg, self.log, self.clock = cfg, log, clock
        self.policy, judge = make_policy_and_judge(cfg)
        self.graph = build_agent_graph(cfg.nodes, self.policy, judge)
        self.llm_reflection = judge is not None
        self.meter: CallMeter | None = getattr(self.policy, "meter", None)
        self.capped_runs: set[str] = set()  # runs whose cap was reported (once each)
        self.cache: OrderedDict[tuple[str, int], Decision] = OrderedDict()
        self.serves = set(cfg.run_ids) if cfg.run_ids is not None else None

    def warm_up(self) -> None:
        """For a controller that calls the embedded model (a remote one is never called, nor charged, for nothing):
        one decision on a made-up first epoch (``model_server.manager``'s
        example), answered to nobody, so the first real decision does not pay what a process's first model call
        costs (imports, graph compilation, the server's first scoring and rationale): on a loaded machine the very
        first decision of a default run fell back after the 20 s model timeout. Logged with its latency; a failure
        is logged and costs nothing (the first decision then pays as before)."""
        if not resolve_controller(self.cfg.controller).uses_llm or self.cfg.llm is None or self.cfg.llm.provider != "local":
            return
        from model_server.manager import example_metrics

        started = time.perf_counter()
        try:
            decision = decide(self.graph, self.policy.name, example_metrics(), self.cfg.max_repairs,
                              self.cfg.feed_reflection, self.cfg.command_space, self.meter)  # fmt: skip
        except Exception as exc:  # a user's node or controller may raise anything
            self.log.warning("warm_up_failed", reason=f"{type(exc).__name__}: {exc}"[:300])
            return
        self.log.info("warmed_up", latency_ms=round((time.perf_counter() - started) * 1000.0, 1),
                      fallback=decision.fallback)  # fmt: skip

    def refuse(self, reason: str, event: str, **data) -> ErrorReply:
        self.log.warning(event, reason=reason, **data)
        return ErrorReply(reason=reason[:2000], pid=os.getpid())

    def answer(self, frames: list[bytes]) -> Message:
        """The reply to one request's frames; never raises for what a peer sends."""
        try:
            request = decode(frames)
        except BusDecodeError as exc:
            return self.refuse(exc.reason, "bad_frame")
        run_id = getattr(request, "run_id", None)
        if self.serves is not None and isinstance(request, (Hello, EpochMetrics)) and run_id not in self.serves:
            reason = f"unknown run {run_id[:80]!r}: this agent serves {len(self.serves)} other run(s)"
            return self.refuse(reason, "request_rejected", topic=request.TOPIC)
        if isinstance(request, Hello):
            self.log.info("handshake", run_id=request.run_id, peer=request.component)
            return Ready(run_id=request.run_id, component="agent", pid=os.getpid())
        if isinstance(request, EpochMetrics):
            return self.decision(request)
        return self.refuse(f"agent does not serve {request.TOPIC!r}", "unexpected_message")

    def decision(self, request: EpochMetrics) -> Decision | ErrorReply:
        key = (request.run_id, request.epoch)
        decision = self.cache.get(key)
        if decision is not None:
            self.log.info("duplicate_request", run_id=request.run_id, epoch=request.epoch)
            return decision
        cfg = self.cfg
        try:
            with self.clock.busy():  # the health thread reports how long this takes
                decision = decide(self.graph, self.policy.name, request, cfg.max_repairs, cfg.feed_reflection,
                                  cfg.command_space, self.meter)  # fmt: skip
        except Exception as exc:  # a user's node may raise anything; the run must go on
            reason = f"agent graph failed: {type(exc).__name__}: {exc}"
            self.log.error("graph_failed", run_id=request.run_id, epoch=request.epoch, reason=reason,
                           traceback=traceback.format_exc(limit=5))  # fmt: skip
            return ErrorReply(reason=reason[:2000], pid=os.getpid())
        self.cache[key] = decision
        if len(self.cache) > cfg.cache_size:
            self.cache.popitem(last=False)
        self.log.info("decision", run_id=request.run_id, epoch=request.epoch, valid=decision.valid,
                      fallback=decision.fallback, latency_ms=round(decision.latency_ms, 1))  # fmt: skip
        if decision.fallback_reason in CAP_REASONS and request.run_id not in self.capped_runs:
            self.capped_runs.add(request.run_id)
            self.log.warning("llm_cap_reached", run_id=request.run_id, epoch=request.epoch,
                             reason=decision.fallback_reason)  # fmt: skip
        return decision


def serve(cfg: AgentConfig, child: Child) -> int:
    """The agent's body under the child-process runtime (``bus.child``): bind, then answer requests until
    stopped or orphaned."""
    clock = BusyClock()
    try:
        service = DecisionService(cfg, child.log, clock)
    except Exception as exc:  # a controller's factory or a node may raise anything: one line, not restarted
        return child.fail(f"controller {cfg.controller!r} cannot start: {type(exc).__name__}: {exc}",
                          EXIT_CONFIG_INVALID)  # fmt: skip
    sock = child.ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    child.on_close.append(sock.close)
    try:
        sock.bind(cfg.endpoint)
    except zmq.ZMQError as exc:
        return child.fail(f"cannot bind {cfg.endpoint}: {exc}", EXIT_BIND_FAILED)
    if cfg.health_endpoint:
        health = HealthResponder(child.ctx, cfg.health_endpoint, clock)
        child.on_close.append(health.stop)  # before start(): a failed bind must still close its socket
        try:
            health.start()
        except zmq.ZMQError as exc:
            return child.fail(f"cannot bind its health socket {cfg.health_endpoint}: {exc}", EXIT_BIND_FAILED)
    warm_up_reader()  # the embedding's load (about 0.2 s) is not paid by the first decision
    service.warm_up()  # nor the first model call's
    child.log.info("agent_ready", endpoint=cfg.endpoint, controller=service.policy.name, nodes=cfg.nodes,
                   llm_base_url=cfg.llm.base_url if cfg.llm else None, llm_reflection=service.llm_reflection)  # fmt: skip
    while not child.orphaned():
        child.sender.pump()  # acknowledgements from the recorder; resend what it lost
        if sock.poll(200, zmq.POLLIN):
            sock.send_multipart(encode(service.answer(sock.recv_multipart())))
    child.log.error("orchestrator_gone")
    return EXIT_ORPHANED


def main(argv: list[str] | None = None) -> int:
    return run_child("agent", AgentConfig, serve, argv, drain_s=5.0, stopped_code=EXIT_OK)
