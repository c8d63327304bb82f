"""``llm`` in the free form: a chat model writes the command (parsed and checked like any answer) and, with
``llm_reflection``, judges the previous decision. Both reach the endpoint through one ``agents.chat.ChatCaller``."""

from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from agents.chat import ChatCaller
from agents.controllers.contract import ControllerAnswer
from agents.prompts import CONTROLLER_SYSTEM, command_schema, judge_prompt, repair_request
from agents.proposals.answer_text import find_answer_object
from agents.state import AgentState
from bus.messages import EpochMetrics, Reflection

MAX_JUDGE_TEXT = 300
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["beneficial", "harmful", "neutral"]},
        "text": {"type": "string", "maxLength": MAX_JUDGE_TEXT},
    },
    "required": ["verdict", "text"],
}


class LLMPolicy:
    """The controller's policy when a language model decides (recorded as controller ``llm``; the
    model's name is in ``runs.llm_model``).

    First attempt: system + prompt. A repair round adds the rejected answer and the exact errors.
    """

    name = "llm"

    def __init__(self, caller: ChatCaller, model_name: str):
        self._call = caller
        self.model_name = model_name
        self.meter = caller.meter  # every call of the decision, the judge's too (agents.service.decide reads it)

    def propose(self, state: AgentState) -> ControllerAnswer:
        messages: list[BaseMessage] = [SystemMessage(CONTROLLER_SYSTEM), HumanMessage(state["prompt"])]
        feedback = state.get("feedback") or []
        if feedback:
            messages += [
                AIMessage(state.get("raw_output", "")[:4000]),
                HumanMessage(repair_request(feedback)),
            ]
        schema = command_schema(state["metrics"], state.get("command_space", "free"))
        reply = self._call(messages, schema, "update_command")
        return ControllerAnswer(
            reply.text,
            reply.prompt_tokens,
            reply.completion_tokens,
            error=reply.error,
            finish_reason=reply.finish_reason,
            adaptations=tuple(reply.adaptations),
        )


@dataclass
class Judgement:
    """The judge's outcome: a reflection, or None with ``failure`` saying why (the rule then judges);
    ``details`` (finish reason, request changes, how the JSON was found) go into the reflector's note."""

    reflection: Reflection | None
    failure: str | None = None
    details: dict = field(default_factory=dict)


class LLMJudge:
    """The reflector's model: a verdict and one sentence, checked; a failure is a :class:`Judgement`
    without reflection, never an exception."""

    def __init__(self, caller: ChatCaller, name: str):
        self._call = caller
        self.name = name

    def judge(self, m: EpochMetrics, rule: Reflection, change_text: str) -> Judgement:
        """The model's verdict on the decision ``rule`` judges (``change_text`` says what it changed)."""
        prompt = judge_prompt(m, rule, change_text)
        reply = self._call([SystemMessage(CONTROLLER_SYSTEM), HumanMessage(prompt)], JUDGE_SCHEMA, "reflection")
        details: dict = {"finish_reason": reply.finish_reason}
        if reply.adaptations:
            details["adapted"] = reply.adaptations

        def failed(reason: str) -> Judgement:  # the prompt goes with the failure, for the record
            return Judgement(None, reason, {**details, "prompt": prompt})

        if reply.error:
            return failed(f"model call failed: {reply.error}")
        found = find_answer_object(reply.text, ("verdict", "text"))
        details.update(found.notes)
        if found.value is None:
            return failed(f"judge {found.error}")
        verdict, text = found.value.get("verdict"), found.value.get("text")
        if verdict not in ("beneficial", "harmful", "neutral"):
            return failed(f"judge verdict must be beneficial, harmful or neutral, got {str(verdict)[:40]!r}")
        if not isinstance(text, str) or not text.strip():
            return failed("judge gave no sentence")
        sentence = text.strip().split("\n")[0][:MAX_JUDGE_TEXT]
        reflection = rule.model_copy(
            update={"verdict": verdict, "text": sentence, "judge": self.name, "rule_verdict": rule.verdict}
        )
        return Judgement(reflection, None, details)
