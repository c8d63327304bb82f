"""Chat models for the controller and the reflector: one factory, one policy, one judge.

Every model — the embedded SmolLM2 served by llama-cpp-python on loopback, or any
OpenAI-compatible endpoint (OpenAI, vLLM, Ollama) — is reached through ``langchain-openai``'s
``ChatOpenAI``, exactly as a remote service. Structured output is asked for in the form the server
accepts: OpenAI's ``json_schema``, or llama.cpp's ``{"type": "json_object", "schema": ...}`` (its
server rejects the ``json_schema`` form). With ``auto``, a server that refuses a form with HTTP 400
is asked again in the next form, and the working form is remembered.

The API key comes only from ``OPENAI_API_KEY`` in the environment; it is never logged, stored or put
into an error message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field

from agents.nodes.prompter import INSTRUCTIONS, command_schema
from agents.nodes.validator import extract_json_object
from agents.policies import ControllerAnswer
from agents.state import AgentState
from bus.messages import EpochMetrics, Reflection

LOCAL_MODEL_NAME = "smollm2-135m-instruct-q4_1"
DEFAULT_REMOTE_MODEL = "gpt-4o-mini"
NO_KEY = "no-key-set"  # ChatOpenAI needs a value; local servers ignore it

ResponseFormatMode = Literal["auto", "json_schema", "json_object", "none"]

# The controller and the judge share the system message and the first part of the user message, so
# llama.cpp reuses that cached prefix across both calls instead of evaluating it twice per epoch.
SYSTEM = (
    "You are the controller of a neural-network training run. You read the training state and answer "
    "with exactly one JSON object that follows the given schema. No prose outside the JSON."
)
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["beneficial", "harmful", "neutral"]},
        "text": {"type": "string"},
    },
    "required": ["verdict", "text"],
}
MAX_JUDGE_TEXT = 300


class LLMSettings(BaseModel):
    """How the agent reaches its chat model. Contains no secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Literal["local", "openai"]
    base_url: str
    model: str
    timeout_s: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=1, ge=0)
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    max_tokens: int = Field(default=256, ge=16)
    response_format: ResponseFormatMode = "auto"


def make_chat_model(settings: LLMSettings) -> BaseChatModel:
    """The chat model for ``settings``; the key is read from the environment here and nowhere else."""
    from langchain_openai import ChatOpenAI

    key = os.environ.get("OPENAI_API_KEY") if settings.provider == "openai" else None
    # langchain-openai sends max_completion_tokens, which llama.cpp's server ignores: bound it there too.
    extra_body = {"max_tokens": settings.max_tokens} if settings.provider == "local" else None
    return ChatOpenAI(
        base_url=settings.base_url,
        api_key=key or NO_KEY,
        model=settings.model,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
        extra_body=extra_body,
    )


def response_formats(settings: LLMSettings, name: str) -> list[dict | None]:
    """Structured-output forms to try, best first; ``ChatCaller`` fills in each call's schema."""
    json_schema = {"type": "json_schema", "json_schema": {"name": name, "strict": False}}
    json_object = {"type": "json_object"}
    mode = settings.response_format
    if mode == "auto":
        return [json_object, None] if settings.provider == "local" else [json_schema, json_object, None]
    return {"json_schema": [json_schema], "json_object": [json_object], "none": [None]}[mode]


def scrub(text: str) -> str:
    """An error message with the API key (if any) removed."""
    key = os.environ.get("OPENAI_API_KEY")
    text = text.replace(key, "***") if key else text
    return re.sub(r"sk-[A-Za-z0-9_\-]{8,}", "sk-***", text)


@dataclass
class ModelReply:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None


class ChatCaller:
    """Calls a chat model with structured output, degrading the form on HTTP 400, never raising for
    transport or API errors (they come back as ``ModelReply.error``)."""

    def __init__(self, chat_model: BaseChatModel, formats: list[dict | None]):
        self._chat_model = chat_model
        self._formats = list(formats) or [None]

    def __call__(self, messages: list[BaseMessage], schema: dict | None = None) -> ModelReply:
        while True:
            form = self._formats[0]
            if form is not None and schema is not None:
                form = _with_schema(form, schema)
            model = self._chat_model.bind(response_format=form) if form is not None else self._chat_model
            try:
                message = model.invoke(messages)
            except openai.APIStatusError as exc:
                # A server that does not take this form says so with 400/422 (OpenAI) or, like
                # llama-cpp-python for json_schema, a 500 naming response_format.
                refused = exc.status_code in (400, 422) or "response_format" in str(exc)
                if form is not None and refused and len(self._formats) > 1:
                    self._formats.pop(0)  # remember: every later call starts with the next form
                    continue
                return ModelReply("", error=scrub(f"{type(exc).__name__}: {exc}")[:1000])
            except openai.APIError as exc:
                return ModelReply("", error=scrub(f"{type(exc).__name__}: {exc}")[:1000])
            usage = getattr(message, "usage_metadata", None) or {}
            return ModelReply(_text(message), usage.get("input_tokens"), usage.get("output_tokens"))


def _with_schema(form: dict, schema: dict) -> dict:
    if form["type"] == "json_schema":
        return {**form, "json_schema": {**form["json_schema"], "schema": schema}}
    return {**form, "schema": schema}


def _text(message: AIMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)


class LLMPolicy:
    """The controller's policy when a language model decides (recorded as controller ``llm``; the
    model's name is in ``runs.llm_model``).

    First attempt: system + prompt. A repair round adds the rejected answer and the exact errors.
    """

    name = "llm"

    def __init__(self, caller: ChatCaller, model_name: str):
        self._call = caller
        self.model_name = model_name

    def propose(self, state: AgentState) -> ControllerAnswer:
        messages: list[BaseMessage] = [SystemMessage(SYSTEM), HumanMessage(state["prompt"])]
        feedback = state.get("feedback") or []
        if feedback:
            messages += [
                AIMessage(state.get("raw_output", "")[:4000]),
                HumanMessage(
                    "That answer was rejected:\n- "
                    + "\n- ".join(feedback)
                    + "\nAnswer again with one corrected JSON object only."
                ),
            ]
        reply = self._call(messages, command_schema(state["metrics"], state.get("command_space", "free")))
        return ControllerAnswer(reply.text, reply.prompt_tokens, reply.completion_tokens, error=reply.error)


class LLMJudge:
    """The reflector's model: a verdict and one sentence, checked; ``None`` when the model fails."""

    def __init__(self, caller: ChatCaller, name: str):
        self._call = caller
        self.name = name

    def judge(self, m: EpochMetrics, rule: Reflection, change_text: str) -> tuple[Reflection | None, str | None]:
        prompt = (
            f"{INSTRUCTIONS}\n\nNow judge your previous decision instead. After epoch {rule.about_epoch} "
            f"({m.regime}, {m.n_train} images) the decision was {change_text}. Validation accuracy went from "
            f"{rule.prev_val_acc:.4f} to {rule.val_acc:.4f} ({(rule.val_acc - rule.prev_val_acc) * 100:+.2f} points); "
            f"train accuracy is now {m.train_acc:.4f}. Was the decision beneficial, harmful or neutral? Give the "
            "verdict and one sentence that explains it with these numbers."
        )
        reply = self._call([SystemMessage(SYSTEM), HumanMessage(prompt)], JUDGE_SCHEMA)
        if reply.error:
            return None, f"model call failed: {reply.error}"
        try:
            answer = extract_json_object(reply.text)
            if not isinstance(answer, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return None, f"judge answer is not valid JSON: {exc}"
        verdict, text = answer.get("verdict"), answer.get("text")
        if verdict not in ("beneficial", "harmful", "neutral"):
            return None, f"judge verdict must be beneficial, harmful or neutral, got {str(verdict)[:40]!r}"
        if not isinstance(text, str) or not text.strip():
            return None, "judge gave no sentence"
        sentence = text.strip().split("\n")[0][:MAX_JUDGE_TEXT]
        return rule.model_copy(
            update={"verdict": verdict, "text": sentence, "judge": self.name, "rule_verdict": rule.verdict}
        ), None
