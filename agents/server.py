"""The agent process: a REP server that answers each ``EpochMetrics`` with a ``Decision``.

Requests are idempotent: the same (run_id, epoch) asked twice — a trainer retrying after a timeout
— gets the cached decision, not a second model call.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections import OrderedDict

import zmq

from agents.config import AgentConfig
from agents.graph import build_agent_graph
from agents.llm import ChatCaller, LLMJudge, LLMPolicy, make_chat_model, response_formats
from agents.policies import HeuristicPolicy, PlateauPolicy, Policy
from bus.lifecycle import Stop, ignore_signals, read_config, stop_on_signals, stop_when_orphaned
from bus.liveness import BusyClock, HealthResponder
from bus.log import configure_logging
from bus.messages import BusDecodeError, Decision, EpochMetrics, ErrorReply, Hello, Ready, decode, encode
from bus.transport import RecordSender


def make_policy_and_judge(cfg: AgentConfig) -> tuple[Policy, LLMJudge | None]:
    """The controller's policy and, with ``llm_reflection``, the model judge. The policy and the judge
    share one ``ChatCaller``: what the endpoint refuses is learnt once, for both."""
    if cfg.controller == "heuristic":
        return HeuristicPolicy(), None
    if cfg.controller == "plateau":
        return PlateauPolicy(), None
    if cfg.llm is None:
        raise ValueError("controller 'llm' needs llm settings")
    settings = cfg.llm
    caller = ChatCaller(make_chat_model(settings), response_formats(settings), settings.temperature, settings.max_tokens)
    judge = LLMJudge(caller, settings.model) if cfg.llm_reflection else None
    return LLMPolicy(caller, settings.model), judge


def decide(
    graph,
    policy_name: str,
    metrics: EpochMetrics,
    max_repairs: int,
    feed_reflection: bool = True,
    command_space: str = "free",
) -> Decision:
    """Run the graph once for ``metrics`` and package the outcome as a Decision."""
    started = time.perf_counter()
    inputs = {"metrics": metrics, "max_repairs": max_repairs, "feed_reflection": feed_reflection, "notes": []}
    # Each repair round is three steps; langgraph's default step limit differs between versions.
    limit = 3 * (max_repairs + 1) + len(graph.nodes) + 10
    state = graph.invoke({**inputs, "command_space": command_space}, {"recursion_limit": limit})
    latency_ms = (time.perf_counter() - started) * 1000.0
    fallback = bool(state.get("fallback"))
    return Decision(
        run_id=metrics.run_id,
        epoch=metrics.epoch,
        controller=policy_name,
        command=state["command"],
        prompt=state.get("prompt", ""),
        raw_output=state.get("raw_output", ""),
        valid=state.get("attempts", 0) == 1 and not fallback,
        repair_attempts=state.get("repair_attempts", 0),
        fallback=fallback,
        fallback_reason=state.get("fallback_reason"),
        clamped=state.get("clamped", {}),
        notes=state.get("notes", []),
        latency_ms=latency_ms,
        prompt_tokens=state.get("prompt_tokens"),
        completion_tokens=state.get("completion_tokens"),
        reflection=state.get("reflection"),
    )


def serve(cfg: AgentConfig) -> int:
    ctx = zmq.Context()
    sender = RecordSender(ctx, cfg.recorder_endpoint)
    log = configure_logging("agent", cfg.run_dir / "logs", forward=sender.send)
    policy, judge = make_policy_and_judge(cfg)
    graph = build_agent_graph(cfg.nodes, policy, judge)
    cache: OrderedDict[tuple[str, int], Decision] = OrderedDict()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    clock = BusyClock()
    health = HealthResponder(ctx, cfg.health_endpoint, clock) if cfg.health_endpoint else None
    parent = os.getppid()

    stop_on_signals()
    stop_when_orphaned()
    try:
        sock.bind(cfg.endpoint)
        if health is not None:
            try:
                health.start()
            except zmq.ZMQError as exc:
                print(f"agent: cannot bind its health socket {cfg.health_endpoint}: {exc}", file=sys.stderr, flush=True)
                return 2
        log.info(
            "agent_ready",
            endpoint=cfg.endpoint,
            controller=policy.name,
            nodes=cfg.nodes,
            llm_base_url=cfg.llm.base_url if cfg.llm else None,
            llm_reflection=judge is not None,
        )
        serves = set(cfg.run_ids) if cfg.run_ids is not None else None
        while os.getppid() == parent:
            sender.pump()  # acknowledgements from the recorder; resend what it lost
            if not sock.poll(200, zmq.POLLIN):
                continue
            frames = sock.recv_multipart()
            try:
                request = decode(frames)
            except BusDecodeError as exc:
                log.warning("bad_frame", reason=exc.reason)
                sock.send_multipart(encode(ErrorReply(reason=exc.reason, pid=os.getpid())))
                continue
            run_id = getattr(request, "run_id", None)
            if serves is not None and isinstance(request, (Hello, EpochMetrics)) and run_id not in serves:
                reason = f"unknown run {run_id[:80]!r}: this agent serves {len(serves)} other run(s)"
                log.warning("request_rejected", reason=reason, topic=request.TOPIC)
                sock.send_multipart(encode(ErrorReply(reason=reason, pid=os.getpid())))
                continue
            if isinstance(request, Hello):
                log.info("handshake", run_id=request.run_id, peer=request.component)
                sock.send_multipart(encode(Ready(run_id=request.run_id, component="agent", pid=os.getpid())))
            elif isinstance(request, EpochMetrics):
                key = (request.run_id, request.epoch)
                decision = cache.get(key)
                if decision is None:
                    try:
                        with clock.busy():  # the health thread reports how long this takes
                            decision = decide(
                                graph, policy.name, request, cfg.max_repairs, cfg.feed_reflection, cfg.command_space
                            )
                    except Exception as exc:  # a user's node may raise anything; the run must go on
                        reason = f"agent graph failed: {type(exc).__name__}: {exc}"
                        log.error(
                            "graph_failed",
                            run_id=request.run_id,
                            epoch=request.epoch,
                            reason=reason,
                            traceback=traceback.format_exc(limit=5),
                        )
                        sock.send_multipart(encode(ErrorReply(reason=reason[:2000], pid=os.getpid())))
                        continue
                    cache[key] = decision
                    if len(cache) > cfg.cache_size:
                        cache.popitem(last=False)
                else:
                    log.info("duplicate_request", run_id=request.run_id, epoch=request.epoch)
                log.info(
                    "decision",
                    run_id=request.run_id,
                    epoch=request.epoch,
                    valid=decision.valid,
                    fallback=decision.fallback,
                    latency_ms=round(decision.latency_ms, 1),
                )
                sock.send_multipart(encode(decision))
            else:
                reason = f"agent does not serve {request.TOPIC!r}"
                log.warning("unexpected_message", reason=reason)
                sock.send_multipart(encode(ErrorReply(reason=reason, pid=os.getpid())))
        log.error("orchestrator_gone")
        return 0
    except Stop as stop:
        log.info("agent_stopped", signal=str(stop))
        return 0
    except zmq.ZMQError as exc:
        print(f"agent: cannot bind {cfg.endpoint}: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        ignore_signals()
        if health is not None:
            health.stop()
        sock.close()
        lost = sender.close(timeout_s=5.0 if os.getppid() == parent else 0.5)
        if lost:
            print(f"agent: {lost} log event(s) not acknowledged by the recorder", file=sys.stderr, flush=True)
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    return serve(read_config(AgentConfig, "python -m agents", "ReflectNet agent process", argv))
