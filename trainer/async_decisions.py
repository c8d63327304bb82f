"""Decisions that do not stall training (``--decisions async``, issue 20).

The trainer sends an epoch's metrics and trains on with the settings in force; the request is made on a thread of
its own (:class:`DecisionChannel`), and its answer is applied at the first epoch boundary after it arrives. At most
one request per run is in flight: the metrics of an epoch that ends while one is unanswered are not sent — a newer
epoch's metrics supersede them (logged as ``request_superseded``, which the recorder stores in ``events``), and when
the answer comes the metrics then newest are asked about. A command asked for after epoch ``a`` and applied after
epoch ``f`` is recorded with ``decisions.epoch = a`` and ``decisions.applied_epoch = f``; ``--replay`` applies it
after epoch ``f`` again, so the replay reproduces the run exactly (``storage.queries.recorded_commands``).

The synchronous protocol (the default, the paper's) does not use this module.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from bus.messages import EpochMetrics
from bus.transport import RequestClient
from trainer.agent_client import DecisionOutcome, fallback_decision, request_decision


@dataclass(frozen=True)
class Answer:
    """A request's outcome, with the metrics it was asked with and how long the trainer itself waited for it (ms):
    0 for an answer that came while it trained, the blocking wait for the one still in flight after the last epoch."""

    metrics: EpochMetrics
    outcome: DecisionOutcome
    blocked_ms: float


class DecisionChannel:
    """One request in flight at most, made on a daemon thread that alone uses the agent's socket while it runs (the
    trainer's log and recorder socket stay on the main thread: :func:`trainer.agent_client.request_decision` logs
    nothing). :meth:`close` cancels a request still waiting (``RequestClient.request``'s ``cancelled``) within about
    a second, before the sockets are closed."""

    def __init__(self, agent: RequestClient, controller: str):
        self._agent, self._controller = agent, controller
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._asked: EpochMetrics | None = None
        self._outcome: DecisionOutcome | None = None

    @property
    def in_flight(self) -> EpochMetrics | None:
        """The metrics of the request not yet taken by :meth:`answered` / :meth:`wait`, None when the channel is free."""
        return self._asked

    def ask(self, metrics: EpochMetrics) -> None:
        """Send ``metrics`` to the agent on the channel's thread. RuntimeError when a request is already in flight."""
        if self._asked is not None:
            raise RuntimeError(f"a request for epoch {self._asked.epoch} is still in flight")
        self._asked, self._outcome = metrics, None
        self._thread = threading.Thread(target=self._request, args=(metrics,), name="decision", daemon=True)
        self._thread.start()

    def _request(self, metrics: EpochMetrics) -> None:
        try:
            self._outcome = request_decision(self._agent, metrics, self._controller, cancelled=self._stop.is_set)
        except Exception as exc:  # a broken socket, say: the request falls back like any failed one, recorded
            reason = f"agent: {type(exc).__name__}: {exc}"
            self._outcome = DecisionOutcome(fallback_decision(metrics, self._controller, reason), 0.0, 1)

    def answered(self) -> Answer | None:
        """The answer to the request in flight if it has arrived (the channel is then free), else None."""
        if self._asked is None or self._thread.is_alive():
            return None
        return self._take(0.0)

    def wait(self) -> Answer | None:
        """The answer to the request in flight, waiting for it (the agent's timeouts and retries bound the wait);
        None when nothing is in flight."""
        if self._asked is None:
            return None
        started = time.perf_counter()
        self._thread.join()
        return self._take((time.perf_counter() - started) * 1000.0)

    def _take(self, blocked_ms: float) -> Answer:
        answer = Answer(self._asked, self._outcome, blocked_ms)
        self._asked = self._outcome = self._thread = None
        return answer

    def close(self) -> None:
        """Cancel a request still waiting and let its thread end (within about a second): the sockets it used may
        then be closed by the main thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
