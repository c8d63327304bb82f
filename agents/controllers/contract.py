"""The controller contract: what a policy is and what it answers.

A policy reads the graph state (``agents.state.AgentState``; ``state["metrics"]`` is the trainer's
``EpochMetrics``) and answers with a :class:`~agents.proposals.proposal.Proposal`, or with a model's answer text
(:class:`ControllerAnswer`) that the validator parses into one. Every answer then goes through the same checks
(``agents.proposals.check``): bounds, trust region, grid, weight-operation caps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union

from agents.proposals.proposal import Proposal, WeightChange
from agents.state import AgentState

__all__ = ["ControllerAnswer", "Policy", "PolicyAnswer", "Proposal", "WeightChange"]


@dataclass(frozen=True)
class ControllerAnswer:
    """A model's answer as text, for the parser (``agents.proposals.parse``): what a chat model in the free form
    answers, or a controller that prefers to write the command as a model would. ``text`` is the answer, then
    the model's token counts and how the call went."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None  # the model call failed ("Type: message"); ``text`` is then empty
    finish_reason: str | None = None  # why a model stopped: "stop", "length" (the token cap), ...
    adaptations: tuple[str, ...] = ()  # what this call changed in the requests to the endpoint, and why
    notes: tuple[dict, ...] = ()  # what the policy wants recorded about this answer
    prompt: str | None = None  # what the model read, when not the prompter's text


PolicyAnswer = Union[Proposal, ControllerAnswer]


class Policy(Protocol):
    """Contract: ``name`` is recorded as the decision's controller; ``propose`` returns, for the current state, a
    typed :class:`Proposal` (every policy that computes its command) or a :class:`ControllerAnswer` (a model's
    answer text, parsed before the checks). On a repair round ``state["feedback"]`` lists what was wrong. Whatever
    ``propose`` raises is recorded as a failed call; the repairer then re-asks or repairs deterministically."""

    name: str

    def propose(self, state: AgentState) -> PolicyAnswer: ...
