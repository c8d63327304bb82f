"""The expert decision form's choosers: the model chooses one of the expert block's candidate actions and says why.

``agents.expert.candidates`` turns the state and the user's instruction into a few candidate actions, each consistent
with both. This module lets a model choose among them:

* :class:`ScoredChooser` (the embedded model): each candidate's text is scored by its mean token
  log-probability as the continuation of "We should" after the state, minus its mean log-probability after a
  content-free state ("N/A") — contextual calibration (Zhao et al. 2021, "Calibrate Before Use",
  arXiv 2102.09690), which took the 135M model from 4/12 to 9/12 on instructions
  (``../shared/notes/small-model-guidance.md``). The model then continues "We should <chosen>, because
  <signal's subject>" for one sentence (``agents.expert.rationale``): the rationale, checked for copies of the prompt
  and for numbers the prompt does not hold. One scoring request and one short completion per decision, both on the same
  cached prompt prefix.
* :class:`ChatChooser` (any OpenAI-compatible chat endpoint): the candidates are listed and the model answers
  ``{"choice": key, "rationale": sentence}`` under a JSON schema.

``agents.controllers.expert.ExpertPolicy`` wraps either as a controller policy. The texts the model reads are in
``agents.prompts``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import httpx

from agents.expert.candidates import Candidate, Plan
from agents.expert.rationale import copied, first_sentence, metric_values, reason_opening, unsupported_numbers
from agents.prompts import ANSWER_OPENING, CHOICE_INSTRUCTIONS, EXPERT_SYSTEM, NEUTRAL_STATE, chatml, state_summary
from agents.proposals.answer_text import find_answer_object
from agents.usage import CallMeter
from bus.messages import EpochMetrics
from model_server.serve import SCORE_PATH

RATIONALE_TOKENS = 40
RETRY_TEMPERATURE = 0.7  # a second, sampled try when the first rationale copies the prompt
# The second try is asked only while the decision has used less than this (seconds): the decision budget (issue
# 18: p50 <= 2 s, p95 <= 3 s on 2 cores) comes before a better sentence; the flags record what was kept.
RETRY_WITHIN_S = 1.0


class ChooserError(RuntimeError):
    """The model could not be asked or answered nothing usable; the message is one line."""


@dataclass
class Choice:
    """A chooser's outcome: the index of the chosen candidate, the rationale, the calibrated scores (None when
    there was only one candidate or the model chose by name), the margin between the best two, and token counts."""

    index: int
    rationale: str
    scores: list[float] | None = None
    margin: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    details: dict = field(default_factory=dict)
    prompt: str = ""  # what the model read: the state summary (and, for a chat endpoint, the listed actions)


class ScoredChooser:
    """Chooses by calibrated option scoring on the embedded model's server (``model_server.serve``) and writes
    the rationale with one short completion. Raises :class:`ChooserError` when the server fails, or when ``meter``
    (``agents.usage``: every request and its tokens are counted there) refuses a request the choice needs."""

    def __init__(self, base_url: str, model: str, timeout_s: float, temperature: float = 0.0,
                 meter: CallMeter | None = None):  # fmt: skip
        self.root = base_url.removesuffix("/").removesuffix("/v1")
        self.model, self.temperature = model, temperature
        self.meter = meter if meter is not None else CallMeter()
        self.http = httpx.Client(timeout=timeout_s)
        self.neutral: dict[str, float] = {}  # option text -> mean log-probability after the content-free state

    def _post(self, path: str, body: dict) -> dict:
        """The server's JSON answer to ``body`` at ``path``. A timed-out call is sent once more: on a loaded 2-core
        machine the embedded server was seen to stall one request for the whole timeout (20 s) and answer the next
        at once, and the trainer's wait (``RunSpec.agent_timeout``: every call a decision may make, plus slack)
        has room for it. Raises :class:`ChooserError` when the second call fails too, or for any other error."""
        for attempt in (1, 2):
            cap = self.meter.admit()
            if cap is not None:
                raise ChooserError(f"{path}: not asked: {self.meter.refusal_text(cap)}")
            try:
                response = self.http.post(self.root + path, json={"model": self.model, **body})
                response.raise_for_status()
                answer = response.json()
                usage = answer.get("usage") if isinstance(answer, dict) else None
                if isinstance(usage, dict):
                    self.meter.add_tokens(usage.get("prompt_tokens"), usage.get("completion_tokens"))
                return answer
            except httpx.TimeoutException as exc:
                if attempt == 2:
                    raise ChooserError(f"{path}: {type(exc).__name__}: {str(exc)[:300]} (twice)") from None
            except (httpx.HTTPError, ValueError) as exc:
                raise ChooserError(f"{path}: {type(exc).__name__}: {str(exc)[:300]}") from None
        raise AssertionError("unreachable")

    def mean_logprobs(self, user: str, options: list[str]) -> list[float]:
        """Each option's mean token log-probability after ``user`` and "We should"; :class:`ChooserError` for an
        answer that is not one non-empty list of finite numbers per option."""
        reply = self._post(
            SCORE_PATH, {"prompt": chatml(EXPERT_SYSTEM, user, ANSWER_OPENING), "options": [" " + o for o in options]}
        )
        scored = reply.get("logprobs") if isinstance(reply, dict) else None
        if not isinstance(scored, list) or len(scored) != len(options):
            raise ChooserError(
                f"{SCORE_PATH} answered {str(reply)[:200]}, not {len(options)} lists of log-probabilities"
            )
        means = []
        for logprobs in scored:
            if not isinstance(logprobs, list) or not logprobs or not all(isinstance(x, (int, float)) for x in logprobs):
                raise ChooserError(f"{SCORE_PATH} answered a log-probability list {str(logprobs)[:100]}")
            means.append(sum(logprobs) / len(logprobs))
        if not all(math.isfinite(x) for x in means):
            raise ChooserError(f"{SCORE_PATH} answered non-finite log-probabilities {means}")
        return means

    def calibrated_scores(self, user: str, options: list[str]) -> list[float]:
        """Each option's mean log-probability after ``user`` minus after the content-free state (cached)."""
        missing = [o for o in options if o not in self.neutral]
        if missing:
            self.neutral.update(zip(missing, self.mean_logprobs(NEUTRAL_STATE, missing)))
        return [s - self.neutral[o] for s, o in zip(self.mean_logprobs(user, options), options)]

    def rationale(self, user: str, chosen: Candidate, opening: str, metrics: dict[str, list[float]] | None = None,
                  started: float | None = None) -> tuple[str, dict, dict]:  # fmt: skip
        """The model's sentence after "We should <chosen>, because <opening>" (:func:`reason_opening`); (sentence,
        usage, flags). A sentence that copies the prompt (:func:`copied`) or cites a number the prompt does not
        hold, or under a metric's name a number that metric never took (:func:`unsupported_numbers` with
        ``metrics``, :func:`metric_values`), is asked for once more, sampled at :data:`RETRY_TEMPERATURE`; the
        better of the two is kept, with its flags — unless the decision, ``started`` at that ``time.monotonic()``,
        has already used :data:`RETRY_WITHIN_S`."""
        start = f"{ANSWER_OPENING} {chosen.text}, because {opening}"
        prompt = chatml(EXPERT_SYSTEM, user, start)
        tries = []
        for temperature in (self.temperature, RETRY_TEMPERATURE):
            reason, usage = self.complete(prompt, temperature)
            joiner = "" if reason[:1] in ("", ",", ".", "'") else " "
            said = f"{opening}{joiner}{reason}"  # the opening names the metric a number may be cited under
            flags = {"rationale_copied": copied(said, user),
                     "rationale_unsupported_numbers": unsupported_numbers(said, user, metrics)}  # fmt: skip
            tries.append((f"{start}{joiner}{reason}".strip(), usage, flags))
            if not flags["rationale_copied"] and not flags["rationale_unsupported_numbers"]:
                break
            if started is not None and time.monotonic() - started > RETRY_WITHIN_S:
                break
            if self.meter.cap_reached() is not None:  # a better sentence is not worth losing the choice
                break
        return min(tries, key=lambda t: (t[2]["rationale_copied"], len(t[2]["rationale_unsupported_numbers"])))

    def complete(self, prompt: str, temperature: float) -> tuple[str, dict]:
        body = {"prompt": prompt, "max_tokens": RATIONALE_TOKENS, "temperature": temperature, "seed": 0,
                "stop": ["\n", "<|im_end|>"]}  # fmt: skip
        reply = self._post("/v1/completions", body)
        try:
            text = reply["choices"][0]["text"] or ""
        except (KeyError, IndexError, TypeError):
            raise ChooserError(f"/v1/completions answered without a choice: {str(reply)[:200]}") from None
        return first_sentence(text), reply.get("usage") or {}

    def choose(self, m: EpochMetrics, plan: Plan) -> Choice:
        started = time.monotonic()
        user = state_summary(m, plan.signal.reason)
        scores = margin = None
        index = 0
        if len(plan.candidates) > 1:
            scores = self.calibrated_scores(user, [c.text for c in plan.candidates])
            index = max(range(len(scores)), key=scores.__getitem__)
            ranked = sorted(scores, reverse=True)
            margin = ranked[0] - ranked[1]
        chosen = plan.candidates[index]
        sentence, usage, flags = self.rationale(user, chosen, reason_opening(m, plan, chosen), metric_values(m), started)
        return Choice(index, sentence, scores, margin, usage.get("prompt_tokens"), usage.get("completion_tokens"), flags,
                      prompt=user)  # fmt: skip


class ChatChooser:
    """Chooses through a chat endpoint: the candidates listed with their reasons, the answer a JSON object
    ``{"choice": key, "rationale": sentence}`` under a schema (``agents.chat.ChatCaller``)."""

    def __init__(self, caller):
        self._call = caller
        self.meter = getattr(caller, "meter", None)  # the caller counts its calls (agents.chat.ChatCaller)

    def choose(self, m: EpochMetrics, plan: Plan) -> Choice:
        from langchain_core.messages import HumanMessage, SystemMessage

        keys = [c.key for c in plan.candidates]
        listed = "\n".join(f"- {c.key}: {c.text} ({c.changes}; {c.reason})" for c in plan.candidates)
        prompt = f"{state_summary(m, plan.signal.reason)}\n\nActions:\n{listed}\n\n{CHOICE_INSTRUCTIONS}"
        schema = {"type": "object", "properties": {"choice": {"enum": keys}, "rationale": {"type": "string", "maxLength": 300}},
                  "required": ["choice", "rationale"]}  # fmt: skip
        reply = self._call([SystemMessage(EXPERT_SYSTEM), HumanMessage(prompt)], schema, "choice")
        if reply.error:
            raise ChooserError(f"model call failed: {reply.error}")
        found = find_answer_object(reply.text, ("choice", "rationale"))
        value = found.value or {}
        if value.get("choice") not in keys or not isinstance(value.get("rationale"), str):
            raise ChooserError(f"the model chose no listed action: {reply.text[:200]!r}")
        sentence = first_sentence(value["rationale"])
        flags = {"rationale_copied": copied(sentence, prompt),
                 "rationale_unsupported_numbers": unsupported_numbers(sentence, prompt, metric_values(m))}  # fmt: skip
        return Choice(keys.index(value["choice"]), sentence, None, None, reply.prompt_tokens, reply.completion_tokens,
                      flags, prompt=prompt)  # fmt: skip
