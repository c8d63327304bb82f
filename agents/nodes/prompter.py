"""prompter: the training state as the text a careful human would read before deciding (``agents.prompts``
writes it), and a fresh count of attempts for this decision."""

from __future__ import annotations

from agents.prompts import render_prompt
from agents.state import AgentState


def prompter(state: AgentState) -> dict:
    """The free-form prompt for ``state["metrics"]`` (``agents.prompts.render_prompt``); attempts reset."""
    prompt = render_prompt(state["metrics"], state.get("feed_reflection", True), state.get("command_space", "free"))
    return {"prompt": prompt, "attempts": 0, "repair_attempts": 0, "feedback": []}
