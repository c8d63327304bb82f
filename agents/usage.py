"""What a decision's model calls cost, and the run's caps on them (issue 19, cost next to quality).

One :class:`CallMeter` is shared by every caller of one controller's model (``agents.chat.ChatCaller`` for the free
form, its judge and the chat chooser; ``agents.expert.choosers.ScoredChooser`` for the embedded model's scoring and
rationale requests). ``agents.service.decide`` opens it for each decision with what the run has spent so far
(``EpochMetrics.history``: each past epoch's ``llm_calls`` and ``llm_cost_usd``, summed by the trainer's records of
its decisions) and reads the decision's calls, tokens and cost back from it.

A call is one request sent to the model's server (an answer, a repair, a judgement, a scoring, a rationale; a
request the server refused and that was sent again changed counts twice; the HTTP client's own retries on a broken
connection are not seen). Before each request the meter is asked (:meth:`CallMeter.admit`): once the run's calls
have reached ``max_calls``, or its cost has reached ``max_cost_usd``, no request is sent and the caller reports the
cap as its error, so the decision goes on exactly as when the model is unavailable (the controller's recorded
fallback, the rule's verdict). The cost of a request is known only after it, so a run may pass ``max_cost_usd`` by
at most one request's cost; it never passes ``max_calls``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CapReason = Literal["llm_call_cap", "llm_cost_cap"]
CAP_REASONS: tuple[CapReason, ...] = ("llm_call_cap", "llm_cost_cap")
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are in USD per million tokens, as every provider lists them


@dataclass(frozen=True)
class Price:
    """USD per million prompt tokens and per million completion tokens (0, 0 for the embedded model)."""

    prompt_usd: float = 0.0
    completion_usd: float = 0.0

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        """USD for these token counts: ``prompt * IN / 1e6 + completion * OUT / 1e6`` (a count not reported is 0)."""
        return ((prompt_tokens or 0) * self.prompt_usd + (completion_tokens or 0) * self.completion_usd) / (
            TOKENS_PER_PRICE_UNIT
        )


@dataclass(frozen=True)
class Caps:
    """The run's caps on model calls and on their cost in USD (None: no cap)."""

    max_calls: int | None = None
    max_cost_usd: float | None = None


class CallMeter:
    """Counts one decision's model calls, tokens and cost (:meth:`open` starts a decision) and refuses a call the
    run's ``caps`` no longer allow (see the module docstring). Not thread-safe: the agent answers one request at a
    time."""

    def __init__(self, price: Price = Price(), caps: Caps = Caps()):
        self.price, self.caps = price, caps
        self.open()

    def open(self, calls_before: int = 0, cost_before_usd: float = 0.0) -> None:
        """Start a decision, the run having made ``calls_before`` model calls costing ``cost_before_usd`` so far."""
        self.calls_before, self.cost_before_usd = calls_before, cost_before_usd
        self.calls = 0
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.refused: CapReason | None = None  # the cap that stopped a call of this decision

    @property
    def cost_usd(self) -> float:
        """This decision's cost so far, USD."""
        return self.price.cost(self.prompt_tokens, self.completion_tokens)

    def cap_reached(self) -> CapReason | None:
        """The cap the run has reached with this decision's calls so far, or None."""
        caps = self.caps
        if caps.max_calls is not None and self.calls_before + self.calls >= caps.max_calls:
            return "llm_call_cap"
        if caps.max_cost_usd is not None and self.cost_before_usd + self.cost_usd >= caps.max_cost_usd:
            return "llm_cost_cap"
        return None

    def admit(self) -> CapReason | None:
        """Ask to send one request: None (counted as a call), or the cap that forbids it (remembered)."""
        reason = self.cap_reached()
        if reason is None:
            self.calls += 1
        else:
            self.refused = reason
        return reason

    def add_tokens(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        """Add what a server reported for an admitted request (None: it did not report that count)."""
        if prompt_tokens is not None:
            self.prompt_tokens = (self.prompt_tokens or 0) + prompt_tokens
        if completion_tokens is not None:
            self.completion_tokens = (self.completion_tokens or 0) + completion_tokens

    def refusal_text(self, reason: CapReason) -> str:
        """One line for a refused call: which cap, and what the run has spent."""
        spent_calls = self.calls_before + self.calls
        spent_usd = self.cost_before_usd + self.cost_usd
        if reason == "llm_call_cap":
            return f"{reason}: the run has made {spent_calls} model call(s), its cap (--max-llm-calls) is " \
                f"{self.caps.max_calls}"
        return f"{reason}: the run's model calls cost {spent_usd:.6g} USD, its cap (--max-llm-cost) is " \
            f"{self.caps.max_cost_usd:g} USD"


def run_spending(history) -> tuple[int, float]:
    """(model calls, USD) the decisions recorded in ``history`` (``EpochSummary`` list) made."""
    return sum(h.llm_calls for h in history), sum(h.llm_cost_usd for h in history)
