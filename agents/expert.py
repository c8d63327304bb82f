"""The expert decision form: the model chooses one of the expert block's candidate actions and says why.

``agents.guidance`` turns the state and the user's instruction into a few candidate actions, each consistent
with both. This module lets a model choose among them:

* :class:`ScoredChooser` (the embedded model): each candidate's text is scored by its mean token
  log-probability as the continuation of "We should" after the state, minus its mean log-probability after a
  content-free state ("N/A") — contextual calibration (Zhao et al. 2021, "Calibrate Before Use",
  arXiv 2102.09690), which took the 135M model from 4/12 to 9/12 on instructions
  (``../shared/notes/small-model-guidance.md``). The model then continues "We should <chosen>, because
  <signal's subject>" for one sentence (:func:`reason_opening`): the rationale, checked for copies of the prompt
  and for numbers the prompt does not hold. One scoring request and one short completion per decision, both on the same
  cached prompt prefix.
* :class:`ChatChooser` (any OpenAI-compatible chat endpoint): the candidates are listed and the model answers
  ``{"choice": key, "rationale": sentence}`` under a JSON schema.

:class:`ExpertPolicy` wraps either as a controller policy: its answer is the chosen candidate as a command
text, so the validator checks and bounds it as any other answer; a note records the plan (intent, signal,
candidates), the choice, its calibrated scores and margin.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import httpx

from agents.guidance import Candidate, Plan, plan_decision
from agents.llm_serve import SCORE_PATH
from agents.policies import ControllerAnswer, command_text
from agents.state import AgentState
from agents.trends import current_values, direction_words, objective_decimals, training_trends
from bus.messages import EpochMetrics

# Two worked examples, on metrics no task here reports (so a copy of them is caught), lead the 135M model to a
# sentence about this epoch's numbers; without them it mostly wrote generalities ("it is not possible to change
# the hyperparameters of a neural network"), measured on bench.guidance's states.
SYSTEM = (
    "You steer the training of a neural network. You choose what to do after each epoch and say why, with the "
    'numbers of this epoch. For example: "We should lower the learning rate, because val_loss has stayed near 0.52 '
    'since epoch 4." or "We should keep every hyperparameter as it is, because test_f1 rose from 0.61 to 0.64, a new '
    'best."'
)
NEUTRAL_STATE = "N/A"
ANSWER_OPENING = "We should"
RATIONALE_TOKENS = 40
RETRY_TEMPERATURE = 0.7  # a second, sampled try when the first rationale copies the prompt
MIN_RATIONALE_WORDS = 4
COPY_WORDS = 6  # a rationale sharing a run of this many words with the prompt is copied, not the model's own
RECENT_EPOCHS = 5


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


def chatml(system: str, user: str, opening: str) -> str:
    """A raw prompt in the ChatML template that SmolLM2-Instruct was trained with, the assistant's answer opened."""
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{opening}"


def state_summary(m: EpochMetrics, signal_reason: str) -> str:
    """The deterministic trajectory summary the model reads: task, objective with direction, the last epochs
    of the objective, the generalization gap, the knobs now, what the evidence says, the instruction."""
    spec, t, d = m.task, training_trends(m), objective_decimals(m.task)
    recent = " ".join(f"{h.metrics.get(spec.objective, math.nan):.{d}f}" for h in m.history[-RECENT_EPOCHS:])
    lines = [
        f"Task: {spec.description}",
        f"Epoch {m.epoch} of {m.epochs_total}. {spec.objective} ({direction_words(spec)}) over the last epochs: {recent}; "
        f"best {t.best:.{d}f} at epoch {t.best_epoch}.",
    ]
    if t.gap is not None:
        lines.append(f"{t.train_metric} is better than {spec.objective} by {t.gap:.{d}f} (previous epoch {t.previous_gap:.{d}f}).")
    lines.append("Now: " + ", ".join(f"{name.replace('_', ' ')} {value:.3g}" for name, value in current_values(m).items()) + ".")
    lines.append(f"Evidence: {signal_reason}.")
    if m.instruction is not None:
        lines.append(f"The user says: \"{m.instruction.text[:300]}\"")
    lines.append("What should we do for the next epoch?")
    return "\n".join(lines)


# The subject and verb of each signal's reason; {better}/{worse} say how the objective moved in its mode's terms.
SIGNAL_OPENINGS = {"steady": "{objective} {better}", "plateau": "{objective} has not", "diverging": "{objective} {worse}",
                   "overfitting": "{train}", "settling": "the last change", "unclear": "{objective} moved"}  # fmt: skip


def reason_opening(m: EpochMetrics, plan: Plan) -> str:
    """The words that open the rationale after "because": the measured signal's subject and verb ("val_acc has
    not", "train_acc" for a widening gap, "val_acc fell"), or the objective's name, preceded by "you asked, and"
    when the user's instruction chose the action. Measured on bench.guidance's states: without them the 135M
    model wrote generalities ("it is not possible to change the hyperparameters of a neural network"); with
    them it mostly writes the epoch's numbers ("val_acc fell from 0.88 to 0.4 in one epoch")."""
    train = training_trends(m).train_metric or m.task.objective
    better, worse = ("rose", "fell") if m.task.mode == "max" else ("fell", "rose")
    words = SIGNAL_OPENINGS.get(plan.signal.kind, "{objective}").format(
        objective=m.task.objective, train=train, better=better, worse=worse
    )
    return f"you asked, and {words}" if plan.source == "instruction" else words


def copied(rationale: str, prompt: str, words: int = COPY_WORDS) -> bool:
    """Whether ``rationale`` repeats a run of ``words`` consecutive words of ``prompt`` (case and punctuation
    ignored), or is shorter than :data:`MIN_RATIONALE_WORDS` words: then it is not the model's own sentence."""
    tokens = re.findall(r"[\w.+-]+", rationale.lower())
    if len(tokens) < MIN_RATIONALE_WORDS:
        return True
    source = " " + " ".join(re.findall(r"[\w.+-]+", prompt.lower())) + " "
    return any(f" {' '.join(tokens[i : i + words])} " in source for i in range(len(tokens) - words + 1))


NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?")


def unsupported_numbers(text: str, prompt: str) -> list[str]:
    """The numbers ``text`` cites that ``prompt`` does not hold: a model's invented figures. A cited number is
    supported when a number of the prompt rounds to it at the precision it is cited with ("0.92" for 0.9203;
    "1.6e-05" within 0.1 %; a whole number within 0.5 %: "456" for 456.2, not "1" for 0.885). A count ("2 epochs", "3 times", "2x") is not checked."""
    known = [float(n) for n in NUMBER.findall(prompt)]
    unsupported = []
    for match in NUMBER.finditer(text):
        word, value = match.group(0), float(match.group(0))
        if re.match(r"\s*(?:epochs?|times|x\b)", text[match.end() :]):
            continue
        if "e" in word or "." not in word:  # 1.6e-05, or a whole number: as written, give or take 0.5 %
            supported = any(math.isclose(value, k, rel_tol=5e-3 if "." not in word else 1e-3) for k in known)
        else:
            decimals = len(word.partition(".")[2])
            supported = any(math.isclose(round(k, decimals), value, abs_tol=1e-12) for k in known)
        if not supported:
            unsupported.append(word)
    return unsupported


def first_sentence(text: str) -> str:
    """The first sentence (or line) of a generation, stripped, at most 300 characters."""
    text = text.strip().split("\n")[0]
    match = re.search(r"(?<=[.!?])\s", text)
    return (text[: match.start()] if match else text).strip()[:300]


class ScoredChooser:
    """Chooses by calibrated option scoring on the embedded model's server (``agents.llm_serve``) and writes
    the rationale with one short completion. Raises :class:`ChooserError` when the server fails."""

    def __init__(self, base_url: str, model: str, timeout_s: float, temperature: float = 0.0):
        self.root = base_url.removesuffix("/").removesuffix("/v1")
        self.model, self.temperature = model, temperature
        self.http = httpx.Client(timeout=timeout_s)
        self.neutral: dict[str, float] = {}  # option text -> mean log-probability after the content-free state

    def _post(self, path: str, body: dict) -> dict:
        try:
            response = self.http.post(self.root + path, json={"model": self.model, **body})
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ChooserError(f"{path}: {type(exc).__name__}: {str(exc)[:300]}") from None

    def mean_logprobs(self, user: str, options: list[str]) -> list[float]:
        """Each option's mean token log-probability after ``user`` and "We should"; :class:`ChooserError` for an
        answer that is not one non-empty list of finite numbers per option."""
        reply = self._post(SCORE_PATH, {"prompt": chatml(SYSTEM, user, ANSWER_OPENING), "options": [" " + o for o in options]})
        scored = reply.get("logprobs") if isinstance(reply, dict) else None
        if not isinstance(scored, list) or len(scored) != len(options):
            raise ChooserError(f"{SCORE_PATH} answered {str(reply)[:200]}, not {len(options)} lists of log-probabilities")
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

    def rationale(self, user: str, chosen: Candidate, opening: str) -> tuple[str, dict, dict]:
        """The model's sentence after "We should <chosen>, because <opening>" (:func:`reason_opening`); (sentence,
        usage, flags). A sentence that copies the prompt (:func:`copied`) or cites a number the prompt does not
        hold (:func:`unsupported_numbers`) is asked for once more, sampled at :data:`RETRY_TEMPERATURE`; the
        better of the two is kept, with its flags."""
        start = f"{ANSWER_OPENING} {chosen.text}, because {opening}"
        prompt = chatml(SYSTEM, user, start)
        tries = []
        for temperature in (self.temperature, RETRY_TEMPERATURE):
            reason, usage = self.complete(prompt, temperature)
            joiner = "" if reason[:1] in ("", ",", ".", "'") else " "
            flags = {"rationale_copied": copied(f"{opening}{joiner}{reason}", user),
                     "rationale_unsupported_numbers": unsupported_numbers(reason, user)}  # fmt: skip
            tries.append((f"{start}{joiner}{reason}".strip(), usage, flags))
            if not flags["rationale_copied"] and not flags["rationale_unsupported_numbers"]:
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
        user = state_summary(m, plan.signal.reason)
        scores = margin = None
        index = 0
        if len(plan.candidates) > 1:
            scores = self.calibrated_scores(user, [c.text for c in plan.candidates])
            index = max(range(len(scores)), key=scores.__getitem__)
            ranked = sorted(scores, reverse=True)
            margin = ranked[0] - ranked[1]
        sentence, usage, flags = self.rationale(user, plan.candidates[index], reason_opening(m, plan))
        return Choice(index, sentence, scores, margin, usage.get("prompt_tokens"), usage.get("completion_tokens"), flags,
                      prompt=user)  # fmt: skip


CHOICE_INSTRUCTIONS = (
    "Choose one of these actions for the next epoch and say why in one sentence about this epoch's numbers. "
    'Answer with JSON only: {"choice": <action key>, "rationale": <sentence>}.'
)


class ChatChooser:
    """Chooses through a chat endpoint: the candidates listed with their reasons, the answer a JSON object
    ``{"choice": key, "rationale": sentence}`` under a schema (``agents.llm.ChatCaller``)."""

    def __init__(self, caller):
        self._call = caller

    def choose(self, m: EpochMetrics, plan: Plan) -> Choice:
        from langchain_core.messages import HumanMessage, SystemMessage

        from agents.nodes.answer_text import find_answer_object

        keys = [c.key for c in plan.candidates]
        listed = "\n".join(f"- {c.key}: {c.text} ({c.changes}; {c.reason})" for c in plan.candidates)
        prompt = f"{state_summary(m, plan.signal.reason)}\n\nActions:\n{listed}\n\n{CHOICE_INSTRUCTIONS}"
        schema = {"type": "object", "properties": {"choice": {"enum": keys}, "rationale": {"type": "string", "maxLength": 300}},
                  "required": ["choice", "rationale"]}  # fmt: skip
        reply = self._call([SystemMessage(SYSTEM), HumanMessage(prompt)], schema, "choice")
        if reply.error:
            raise ChooserError(f"model call failed: {reply.error}")
        found = find_answer_object(reply.text, ("choice", "rationale"))
        value = found.value or {}
        if value.get("choice") not in keys or not isinstance(value.get("rationale"), str):
            raise ChooserError(f"the model chose no listed action: {reply.text[:200]!r}")
        sentence = first_sentence(value["rationale"])
        return Choice(keys.index(value["choice"]), sentence, None, None, reply.prompt_tokens, reply.completion_tokens,
                      {"rationale_copied": copied(sentence, prompt)}, prompt=prompt)  # fmt: skip


class ExpertPolicy:
    """The controller's policy in the expert decision form (recorded as controller ``llm``): plan with
    ``agents.guidance``, let ``chooser`` pick, answer the chosen candidate as a command text. A chooser failure
    is a model error (``ControllerAnswer.error``): the repairer re-asks, then the graph's recorded fallback."""

    name = "llm"

    def __init__(self, chooser, model_name: str):
        self.chooser, self.model_name = chooser, model_name

    def propose(self, state: AgentState) -> ControllerAnswer:
        m = state["metrics"]
        plan = plan_decision(m)
        try:
            choice = self.chooser.choose(m, plan)
        except ChooserError as exc:
            return ControllerAnswer("", error=f"ChooserError: {exc}"[:1000])
        chosen = plan.candidates[choice.index]
        extra = {"weight_modulation": chosen.weight_modulation} if chosen.weight_modulation else {}
        note = plan_note(plan, choice)
        text = command_text(chosen.values, chosen.alpha, choice.rationale, **extra)
        return ControllerAnswer(text, choice.prompt_tokens, choice.completion_tokens, notes=(note,),
                                prompt=choice.prompt or None)  # fmt: skip


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
