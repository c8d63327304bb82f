"""controller: one call of the policy (a chat model, a rule, the expert form, a user's controller) per attempt. A
typed :class:`~agents.proposals.proposal.Proposal` goes to the validator as it is (and is recorded as its answer
text); a model's answer text is parsed there."""

from __future__ import annotations

import time
from typing import Callable

from agents.controllers.contract import ControllerAnswer, Policy
from agents.proposals.proposal import Proposal
from agents.state import AgentState


def controller_node(policy: Policy) -> Callable[[AgentState], dict]:
    """The controller node around ``policy``. Whatever ``policy.propose`` raises is a model error
    (``llm_error`` "Type: message"), never a graph failure: the validator and repairer take it from there."""

    def controller(state: AgentState) -> dict:
        started = time.perf_counter()
        try:
            answer = policy.propose(state)
        except Exception as exc:  # the model-call boundary: any failure is recorded as the model's
            answer = ControllerAnswer("", error=f"{type(exc).__name__}: {exc}"[:1000])
        if not isinstance(answer, (Proposal, ControllerAnswer)):
            kind = type(answer).__name__
            answer = ControllerAnswer("", error=f"TypeError: {policy.name} answered a {kind}, not a Proposal"[:1000])
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        attempt = state.get("attempts", 0) + 1
        if isinstance(answer, Proposal):
            try:
                return _proposal_update(state, answer, attempt, elapsed_ms)
            except (TypeError, ValueError) as exc:  # a user's proposal that cannot even be written down
                answer = ControllerAnswer("", error=f"{type(exc).__name__}: {policy.name}'s proposal: {exc}"[:1000])
        update = {
            "proposal": None,
            "raw_output": answer.text,
            "llm_error": answer.error,
            "finish_reason": answer.finish_reason,
            "attempts": attempt,
            "prompt_tokens": _add(state.get("prompt_tokens"), answer.prompt_tokens),
            "completion_tokens": _add(state.get("completion_tokens"), answer.completion_tokens),
            "llm_latency_ms": state.get("llm_latency_ms", 0.0) + elapsed_ms,
        }
        if answer.finish_reason is not None or answer.error or answer.adaptations:
            note = {
                "node": "controller",
                "action": "model_call",
                "attempt": attempt,
                "finish_reason": answer.finish_reason,
            }
            if answer.error:
                note["error"] = answer.error
            if answer.adaptations:
                note["adapted"] = list(answer.adaptations)
            update["notes"] = [note]
        if answer.notes:
            update["notes"] = [*update.get("notes", []), *answer.notes]
        if answer.prompt is not None:  # the decision records what the model actually read
            update["prompt"] = answer.prompt
        return update

    return controller


def _proposal_update(state: AgentState, proposal: Proposal, attempt: int, elapsed_ms: float) -> dict:
    """The state update for a typed proposal: the proposal itself, its answer text for the record, its tokens."""
    update = {
        "proposal": proposal,
        "raw_output": proposal.answer_text(),
        "llm_error": None,
        "finish_reason": None,
        "attempts": attempt,
        "prompt_tokens": _add(state.get("prompt_tokens"), proposal.prompt_tokens),
        "completion_tokens": _add(state.get("completion_tokens"), proposal.completion_tokens),
        "llm_latency_ms": state.get("llm_latency_ms", 0.0) + elapsed_ms,
    }
    if proposal.notes:
        update["notes"] = list(proposal.notes)
    if proposal.prompt is not None:  # the decision records what the model actually read
        update["prompt"] = proposal.prompt
    return update


def _add(total: int | None, more: int | None) -> int | None:
    if more is None:
        return total
    return (total or 0) + more
