"""``llm`` in the expert decision form: the expert block (``agents.expert``) plans a few candidate actions from the
instruction and the evidence, a chooser (``agents.expert.choosers``) lets the model pick one and say why, and the
pick is proposed as a typed :class:`~agents.proposals.proposal.Proposal` that the checks bound like any other."""

from __future__ import annotations

import json

from agents.controllers.contract import ControllerAnswer
from agents.expert.candidates import Plan, plan_decision
from agents.expert.choosers import Choice, ChooserError
from agents.proposals.proposal import Proposal
from agents.state import AgentState


class ExpertPolicy:
    """The controller's policy in the expert decision form (recorded as controller ``llm``): plan with
    ``agents.expert.candidates``, let ``chooser`` pick, propose the chosen candidate with the choice, its margin,
    the instruction's reading and the model's token counts. A chooser failure is a model error
    (``ControllerAnswer.error``): the repairer re-asks, then the graph's recorded fallback."""

    name = "llm"

    def __init__(self, chooser, model_name: str):
        self.chooser, self.model_name = chooser, model_name
        self.meter = getattr(chooser, "meter", None)  # the chooser's calls (agents.service.decide reads it)

    def propose(self, state: AgentState) -> Proposal | ControllerAnswer:
        m = state["metrics"]
        plan = plan_decision(m)
        try:
            choice = self.chooser.choose(m, plan)
        except ChooserError as exc:
            return ControllerAnswer("", error=f"ChooserError: {exc}"[:1000])
        chosen = plan.candidates[choice.index]
        return Proposal(
            chosen.values, chosen.alpha, chosen.weight_changes, choice.rationale, choice=chosen.key,
            margin=choice.margin, prompt_tokens=choice.prompt_tokens, completion_tokens=choice.completion_tokens,
            reading=plan.intent.words(), prompt=choice.prompt or None, notes=(plan_note(plan, choice),),
            rollback=chosen.rollback,
        )  # fmt: skip


def plan_note(plan: Plan, choice: Choice) -> dict:
    """The record of one expert decision: intent, signal, candidates (key, changes, reason, score), the
    chosen key and the margin over the runner-up (None: a single candidate, no choice to make)."""
    candidates = [
        {"key": c.key, "changes": c.changes, "reason": c.reason[:200],
         **({"score": round(choice.scores[i], 4)} if choice.scores is not None else {})}
        for i, c in enumerate(plan.candidates)
    ]  # fmt: skip
    return {
        "node": "controller", "action": "expert_choice", "intent": plan.intent.words(), "signal": plan.signal.kind,
        "source": plan.source, "candidates": candidates, "choice": plan.candidates[choice.index].key,
        "margin": None if choice.margin is None else round(choice.margin, 4), **choice.details,
    }  # fmt: skip


def candidates_json(plan: Plan) -> str:
    """The plan's candidates as JSON (for tests and the benchmark's report)."""
    return json.dumps([{"key": c.key, "text": c.text, "changes": c.changes} for c in plan.candidates])
