"""The agent graph's state. Each node is a plain function ``state -> partial update``; fields merge
by replacement except ``notes``, which every node appends to."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from agents.proposals.proposal import Proposal
from bus.messages import EpochMetrics, Reflection, UpdateCommand


class AgentState(TypedDict, total=False):
    metrics: EpochMetrics  # input: everything the trainer reported for this epoch
    max_repairs: int  # input: model re-asks before the deterministic repair
    feed_reflection: bool  # input: show the previous verdict in the prompt (off for ablations)
    command_space: str  # input: "free" numbers in ranges, or a "grid" of choices around the current values

    prompt: str  # prompter; the controller replaces it when its model read something else (the expert form)
    proposal: Proposal | None  # controller: a policy's typed proposal (None: a model's text, parsed by the validator)
    raw_output: str  # controller: the answer text exactly as produced (a proposal's, as its answer text)
    attempts: int  # controller calls so far (1 = first try)
    prompt_tokens: int | None
    completion_tokens: int | None
    llm_latency_ms: float
    llm_error: str | None  # controller: the model call failed (no answer to validate or repair)
    finish_reason: str | None  # controller: why the model stopped ("stop", "length", ...), None for a rule policy

    errors: list[str]  # validator: what is wrong with the latest answer (empty = valid)
    partial: dict[str, Any]  # validator: the fields of the latest answer that passed
    clamped: dict[str, Any]  # validator: field -> {"from", "to"} for every clamp
    command: UpdateCommand | None  # the command to apply once validation passes or is repaired
    feedback: list[str]  # repairer -> controller: the exact errors to fix
    repair_attempts: int
    fallback: bool
    fallback_reason: str | None

    overridden: dict[str, Any] | None  # guard: the policy's proposal it overrode (agents.nodes.guard.proposal_record)
    reflection: Reflection | None  # reflector
    notes: Annotated[list[dict[str, Any]], operator.add]  # any node: what it did and why
