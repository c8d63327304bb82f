"""validator: the controller's latest answer checked against the task (``agents.proposals.check``). A policy's
typed :class:`~agents.proposals.proposal.Proposal` is checked as it is; a model's answer text is parsed first
(``agents.proposals.parse``). What is wrong goes to the repairer; how an answer text was read (reasoning set aside,
lenient parsing, a field given twice, numbers written as strings, ...) goes to ``notes``."""

from __future__ import annotations

import traceback
from typing import Any

import structlog

from agents.proposals.check import CheckedAnswer, check_proposal, validate_answer
from agents.state import AgentState


def checked_answer(state: AgentState) -> CheckedAnswer:
    """The checks' verdict on the controller's latest answer: its proposal, else its text."""
    m, space = state["metrics"], state.get("command_space", "free")
    proposal = state.get("proposal")
    if proposal is not None:
        return check_proposal(proposal, m, space)
    return validate_answer(state.get("raw_output", ""), m, space)


def validator(state: AgentState) -> dict:
    """Check the controller's latest answer (:func:`checked_answer`); a model-call failure is an error at once.
    Whatever the answer, this node returns an update, never an exception."""
    if state.get("llm_error"):
        return {"command": None, "partial": {}, "clamped": {}, "errors": [f"model call failed: {state['llm_error']}"]}
    m = state["metrics"]
    try:
        checked = checked_answer(state)
    except Exception as exc:  # a defect here must cost a repair round, not the decision; it is logged
        reason = f"the validator could not check this answer: {type(exc).__name__}: {exc}"[:1000]
        structlog.get_logger().error(
            "validator_failed", run_id=m.run_id, epoch=m.epoch, reason=reason, traceback=traceback.format_exc(limit=5)
        )
        checked = CheckedAnswer(None, errors=[reason])
    errors = list(checked.errors)
    if errors and state.get("finish_reason") == "length":
        errors.append("the answer hit the token limit and was cut off (finish_reason length): answer more briefly")
    update: dict[str, Any] = {
        "command": checked.command,
        "partial": checked.partial,
        "clamped": checked.clamped,
        "errors": errors,
    }
    if checked.notes:
        update["notes"] = [
            {"node": "validator", "action": "parse", "attempt": state.get("attempts", 0), **checked.notes}
        ]
    return update
