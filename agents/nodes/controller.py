"""controller: one call of the policy (a chat model, or the heuristic) per attempt."""

from __future__ import annotations

import time
from typing import Callable

from agents.policies import Policy
from agents.state import AgentState


def make_controller(policy: Policy) -> Callable[[AgentState], dict]:
    def controller(state: AgentState) -> dict:
        started = time.perf_counter()
        answer = policy.propose(state)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return {
            "raw_output": answer.text,
            "llm_error": answer.error,
            "attempts": state.get("attempts", 0) + 1,
            "prompt_tokens": _add(state.get("prompt_tokens"), answer.prompt_tokens),
            "completion_tokens": _add(state.get("completion_tokens"), answer.completion_tokens),
            "llm_latency_ms": state.get("llm_latency_ms", 0.0) + elapsed_ms,
        }

    return controller


def _add(total: int | None, more: int | None) -> int | None:
    if more is None:
        return total
    return (total or 0) + more
