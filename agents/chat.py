"""Calling a chat model: one factory, one caller per endpoint, shared by the free-form policy, the judge and the
expert form's chat chooser.

Every model — the embedded SmolLM2 served by llama-cpp-python on loopback, or any
OpenAI-compatible endpoint (OpenAI, vLLM, Ollama) — is reached through ``langchain-openai``'s
``ChatOpenAI``, exactly as a remote service. Structured output is asked for in the form the server
accepts: OpenAI's ``json_schema``, or llama.cpp's ``{"type": "json_object", "schema": ...}`` (its
server rejects the ``json_schema`` form). Every request carries a token cap as ``max_tokens``, the
name every OpenAI-compatible server honours (llama.cpp and Ollama ignore ``max_completion_tokens``).

A model call never raises (:class:`ChatCaller`): whatever the client raises is a model error
``"Type: message"``; an answer cut off by the token cap keeps its text. Every request is counted, with its tokens,
by the caller's ``agents.usage.CallMeter``, which also refuses a request beyond the run's caps (then the error
names the cap). A refused request is changed
only when the error names what it refuses — a response format, the token cap's name, the temperature —
and then exactly that, remembered for every later call to the endpoint; any other error is reported
as it is and the next call is unchanged.

The API key comes only from ``OPENAI_API_KEY`` in the environment; it is never logged, stored or put
into an error message.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Literal

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage

from agents.config import LLMSettings
from agents.usage import CallMeter, Caps, Price

NO_KEY = "no-key-set"  # ChatOpenAI needs a value; local servers ignore it


ResponseForm = Literal["json_schema", "json_object"] | None
# The names a token cap goes by, best first: every OpenAI-compatible server honours max_tokens;
# OpenAI's reasoning models refuse it by name and take max_completion_tokens instead.
TOKEN_CAP_NAMES = ("max_tokens", "max_completion_tokens")
# Words with which servers refuse a parameter (OpenAI, vLLM, llama-cpp-python's pydantic errors, ...).
# "maximum context length", "too large", rate limits and the like are not among them: those errors
# say nothing about what the server accepts.
REFUSAL = re.compile(
    r"not supported|unsupported|does not support|doesn't support|not (?:allowed|permitted|available)"
    r"|unrecogni[sz]ed|unknown (?:parameter|field|argument|key|name)|extra (?:inputs|fields)|extra_forbidden"
    r"|input should be|literal_error|invalid schema|only the default|cannot both|at the same time",
    re.IGNORECASE,
)


def make_chat_model(settings: LLMSettings) -> BaseChatModel:
    """The chat model for ``settings``; the key is read from the environment here and nowhere else.
    Sampling parameters (temperature, token cap, response format) are sent per call by :class:`ChatCaller`."""
    from langchain_openai import ChatOpenAI

    key = os.environ.get("OPENAI_API_KEY") if settings.provider == "openai" else None
    return ChatOpenAI(
        base_url=settings.base_url,
        api_key=key or NO_KEY,
        model=settings.model,
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
    )


def make_meter(settings: LLMSettings) -> CallMeter:
    """The meter of one controller's model calls: the user's price and the run's caps (``agents.usage``)."""
    price = Price(settings.price_prompt_usd, settings.price_completion_usd)
    return CallMeter(price, Caps(settings.max_calls, settings.max_cost_usd))


def response_formats(settings: LLMSettings) -> list[ResponseForm]:
    """Structured-output forms to try, best first; :class:`ChatCaller` fills in each call's schema."""
    mode = settings.response_format
    if mode == "auto":
        return ["json_object", None] if settings.provider == "local" else ["json_schema", "json_object", None]
    return [None if mode == "none" else mode]


def scrub(text: str) -> str:
    """An error message with the API key (if any) removed."""
    key = os.environ.get("OPENAI_API_KEY")
    text = text.replace(key, "***") if key else text
    return re.sub(r"sk-[A-Za-z0-9_\-]{8,}", "sk-***", text)


def describe_error(exc: BaseException) -> str:
    """``"Type: message"`` for a failed call, key scrubbed, at most 1000 characters."""
    return scrub(f"{type(exc).__name__}: {exc}")[:1000]


@dataclass
class ModelReply:
    """One model call's outcome: the answer text (kept even when cut off by the token cap), token
    counts, why the model stopped, or ``error`` ("Type: message") when there is no answer."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    finish_reason: str | None = None
    adaptations: list[str] = field(default_factory=list)  # what this call changed in the requests, and why


def refused_parameter(exc: openai.APIStatusError, sent: list[str]) -> str | None:
    """Which of the parameters ``sent`` the error ``exc`` refuses by name, or None when it names none
    or is not a refusal (a context-length error, a rate limit, a server fault). A response format is
    also named by its type (``json_schema``)."""
    body = exc.body if exc.body is not None else ""
    text = f"{exc} {json.dumps(body, default=str) if not isinstance(body, str) else body}"
    if not REFUSAL.search(text):
        return None
    param = getattr(exc, "param", None)
    if isinstance(param, str) and re.split(r"[.\[]", param)[0] in sent:
        return re.split(r"[.\[]", param)[0]
    positions = {}
    for name in sent:
        aliases = (name, "json_schema", "json_object") if name == "response_format" else (name,)
        hits = [m.start() for alias in aliases if (m := re.search(rf"(?<![\w]){alias}(?![\w])", text))]
        if hits:
            positions[name] = min(hits)
    return min(positions, key=positions.get) if positions else None


class ChatCaller:
    """Calls one endpoint's chat model with structured output and a token cap, and never raises.

    Transport and API errors, an answer the client cannot parse (a malformed 200 body) and any other
    exception come back as ``ModelReply.error``; an answer cut off at the token cap (the SDK raises
    ``LengthFinishReasonError`` when a response format is set) comes back with its text and
    ``finish_reason`` "length". When the server refuses a parameter by name (see
    :func:`refused_parameter`), the request drops exactly that — the next response format, the next
    name of the token cap, no temperature — and every later call (this caller is shared by the
    controller and the judge of an endpoint) starts from there. ``meter`` counts every request sent and its
    tokens; a request it refuses (a cap of the run) is not sent, and the reply's error names the cap.
    """

    def __init__(
        self,
        chat_model: BaseChatModel,
        formats: list[ResponseForm],
        temperature: float | None = None,
        max_tokens: int | None = None,
        meter: CallMeter | None = None,
    ):
        self.meter = meter if meter is not None else CallMeter()
        self._chat_model = chat_model
        self._formats = list(formats) or [None]
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._cap_names = list(TOKEN_CAP_NAMES) if max_tokens is not None else []

    def request_options(self, schema: dict | None, name: str) -> dict:
        """The keyword arguments of the next call for an answer following ``schema`` (named ``name``)."""
        options: dict = {}
        if self._temperature is not None:
            options["temperature"] = self._temperature
        if self._cap_names and self._cap_names[0] == "max_tokens":
            options["extra_body"] = {"max_tokens": self._max_tokens}  # ChatOpenAI renames its own max_tokens
        elif self._cap_names:
            options[self._cap_names[0]] = self._max_tokens
        form = self._formats[0]
        if form == "json_schema" and schema is not None:
            options["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name, "strict": False, "schema": schema},
            }
        elif form == "json_object":
            options["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
        return options

    def __call__(self, messages: list[BaseMessage], schema: dict | None = None, name: str = "answer") -> ModelReply:
        changes: list[str] = []
        while True:
            options = self.request_options(schema, name)
            cap = self.meter.admit()
            if cap is not None:
                return ModelReply("", error=self.meter.refusal_text(cap), adaptations=changes)
            try:
                message = self._chat_model.invoke(messages, **options)
            except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError) as exc:
                reply = _reply_from_completion(exc, changes)
                self.meter.add_tokens(reply.prompt_tokens, reply.completion_tokens)
                return reply
            except openai.APIStatusError as exc:
                change = self._drop_refused(exc, options)
                if change is None:
                    return ModelReply("", error=describe_error(exc), adaptations=changes)
                changes.append(change)
            except Exception as exc:  # the model-call boundary: whatever the client raises is a model error
                return ModelReply("", error=describe_error(exc), adaptations=changes)
            else:
                usage = getattr(message, "usage_metadata", None) or {}
                finish = (getattr(message, "response_metadata", None) or {}).get("finish_reason")
                self.meter.add_tokens(usage.get("input_tokens"), usage.get("output_tokens"))
                return ModelReply(
                    _text(message), usage.get("input_tokens"), usage.get("output_tokens"),
                    finish_reason=finish, adaptations=changes,
                )  # fmt: skip

    def _drop_refused(self, exc: openai.APIStatusError, options: dict) -> str | None:
        """Change the request as the error ``exc`` asks, if it names something refused; say what changed."""
        cap = self._cap_names[0] if self._cap_names else None
        sent = [p for p in ("response_format", "temperature") if p in options] + ([cap] if cap else [])
        refused = refused_parameter(exc, sent)
        status = getattr(exc, "status_code", "?")
        if refused == "response_format" and len(self._formats) > 1:
            old = self._formats.pop(0)
            now = f"response_format {self._formats[0]}" if self._formats[0] else "no response_format"
            return f"HTTP {status} refused response_format {old}: {now} from now on"
        if refused == "temperature":
            self._temperature = None
            return f"HTTP {status} refused temperature: the server's default from now on"
        if refused is not None and refused == cap:
            self._cap_names.pop(0)
            now = self._cap_names[0] if self._cap_names else "no token cap"
            return f"HTTP {status} refused {cap}: {now} from now on"
        return None


def _reply_from_completion(exc: openai.OpenAIError, changes: list[str]) -> ModelReply:
    """The answer inside a finish-reason error (cut off by the token cap, or filtered), text kept."""
    completion = getattr(exc, "completion", None)
    choices = getattr(completion, "choices", None) or []
    if not choices:
        return ModelReply("", error=describe_error(exc), adaptations=changes)
    usage = getattr(completion, "usage", None)
    return ModelReply(
        getattr(choices[0].message, "content", None) or "",
        getattr(usage, "prompt_tokens", None),
        getattr(usage, "completion_tokens", None),
        finish_reason=choices[0].finish_reason,
        adaptations=changes,
    )


def _text(message: AIMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
