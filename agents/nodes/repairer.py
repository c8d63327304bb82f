"""repairer: send the exact validation errors back to the model, at most ``max_repairs`` times; then
repair deterministically — keep the fields that passed, take the current value for the rest, drop
a modulation that failed — and record the fallback with its reason."""

from __future__ import annotations

from agents.proposals.check import ALPHA, command_from
from agents.state import AgentState
from agents.trends import current_values
from bus.messages import UpdateCommand


def should_retry(state: AgentState) -> bool:
    # A failed call (server down, timeout after the client's own retries) is not something the model
    # can fix by reading its errors: repair deterministically at once.
    return not state.get("llm_error") and state.get("repair_attempts", 0) < state.get("max_repairs", 0)


def deterministic_repair(state: AgentState) -> UpdateCommand:
    """The command from the fields that passed validation, each missing knob and alpha at its current value."""
    m = state["metrics"]
    partial = state.get("partial", {})
    fields = {**current_values(m), ALPHA: m.alpha, **partial}
    fields["rationale"] = f"deterministic repair: {partial.get('rationale', '')}"[:2000]
    return command_from(fields, m.task.knob_names())


def repairer(state: AgentState) -> dict:
    errors = state.get("errors", [])
    if should_retry(state):
        rejected = {
            "node": "repairer",
            "action": "re-ask",
            "attempt": state.get("attempts", 0),
            "errors": errors[:10],
            "answer": state.get("raw_output", "")[:500],
        }
        return {"feedback": list(errors), "repair_attempts": state.get("repair_attempts", 0) + 1, "notes": [rejected]}
    if state.get("llm_error"):
        reason = f"model call failed: {state['llm_error']}"
    else:
        reason = f"still invalid after {state.get('attempts', 0)} answer(s): " + "; ".join(errors)
    return {
        "command": deterministic_repair(state),
        "fallback": True,
        "fallback_reason": reason[:2000],
        "notes": [{"node": "repairer", "action": "deterministic_repair", "reason": reason[:500]}],
    }
