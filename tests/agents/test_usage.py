"""Counting a decision's model calls, tokens and cost, and the run's caps (agents/usage.py), through the real
callers (ChatCaller with a scripted chat model, ScoredChooser against a scripted server) and the real graph."""

from __future__ import annotations

import json

import pytest

from agents.chat import ChatCaller
from agents.controllers.expert import ExpertPolicy
from agents.controllers.llm import LLMJudge, LLMPolicy
from agents.expert.candidates import plan_decision
from agents.expert.choosers import ScoredChooser
from agents.graph import CORE_NODES, build_agent_graph
from agents.service import decide
from agents.usage import CallMeter, Caps, Price, run_spending
from tests.agents.controllers.test_expert import ScoringServer, overfitting_state
from tests.agents.test_llm_failures import GOOD, PREVIOUS, scripted
from tests.helpers import make_metrics

JUDGED = json.dumps({"verdict": "beneficial", "text": "val_acc rose after the change."})
PRICE = Price(prompt_usd=2.0, completion_usd=10.0)  # USD per million tokens


def spent(metrics, calls: int, cost_usd: float):
    """``metrics`` whose history says the run's earlier decisions made ``calls`` calls costing ``cost_usd``."""
    first = metrics.history[0].model_copy(update={"llm_calls": calls, "llm_cost_usd": cost_usd})
    return metrics.model_copy(update={"history": [first, *metrics.history[1:]]})


def free_form(meter: CallMeter, *answers: str):
    """The free form's graph (policy and judge on one caller, one meter) over a scripted model."""
    model = scripted(*answers)
    caller = ChatCaller(model, [None], meter=meter)
    policy, judge = LLMPolicy(caller, "fake"), LLMJudge(caller, "fake")
    return model, policy, build_agent_graph(list(CORE_NODES), policy, judge)


def judged_metrics():
    return make_metrics([0.80, 0.85], previous_command=PREVIOUS)


def test_the_price_is_per_million_tokens_and_a_count_not_reported_costs_nothing():
    assert PRICE.cost(1_000_000, 0) == 2.0 and PRICE.cost(500_000, 100_000) == pytest.approx(2.0)
    assert PRICE.cost(None, None) == 0.0 and Price().cost(10**9, 10**9) == 0.0


def test_the_meter_refuses_at_the_call_cap_and_at_the_cost_cap_counting_what_came_before():
    meter = CallMeter(PRICE, Caps(max_calls=3))
    meter.open(calls_before=2)
    assert meter.admit() is None and meter.calls == 1
    assert meter.admit() == "llm_call_cap" and meter.calls == 1 and meter.refused == "llm_call_cap"
    meter = CallMeter(PRICE, Caps(max_cost_usd=0.01))
    meter.open(calls_before=50, cost_before_usd=0.004)
    assert meter.admit() is None
    meter.add_tokens(1000, 500)  # 0.002 + 0.005 USD: the run is at 0.011, past the cap
    assert meter.cost_usd == pytest.approx(0.007) and meter.admit() == "llm_cost_cap"
    meter.open()
    assert meter.refused is None and meter.calls == 0 and meter.prompt_tokens is None


def test_every_call_of_a_decision_is_counted_the_judges_and_the_repairs_too():
    meter = CallMeter(PRICE)
    _, policy, graph = free_form(meter, "not json at all", json.dumps(GOOD), JUDGED)
    decision = decide(graph, "llm", judged_metrics(), 2, meter=meter)
    assert decision.repair_attempts == 1 and not decision.fallback
    assert decision.reflection is not None and decision.reflection.judge == "fake"
    # Three calls of 100 prompt and 20 completion tokens each (the scripted usage): answer, repair, judge.
    assert (decision.llm_calls, decision.prompt_tokens, decision.completion_tokens) == (3, 300, 60)
    assert decision.cost_usd == pytest.approx((300 * 2.0 + 60 * 10.0) / 1e6)


def test_at_the_call_cap_the_model_is_not_asked_and_the_decision_is_the_fallback_with_the_cap_as_reason():
    meter = CallMeter(PRICE, Caps(max_calls=3))
    model, _, graph = free_form(meter, json.dumps(GOOD), JUDGED)
    m = spent(judged_metrics(), calls=3, cost_usd=0.0)
    decision = decide(graph, "llm", m, 2, meter=meter)
    assert model.calls == [] and decision.llm_calls == 0 and decision.cost_usd == 0.0
    assert decision.fallback and decision.fallback_reason == "llm_call_cap"
    assert decision.command.hyperparameters == m.hyperparameters  # the controller's fallback: the current knobs
    assert decision.reflection.judge == "rule"  # the judge was not asked either
    assert any(n.get("action") == "llm_cap" and n["run_calls_before"] == 3 for n in decision.notes)


def test_a_cap_reached_within_a_decision_stops_the_next_call_the_judge_falls_back_to_the_rule():
    meter = CallMeter(PRICE, Caps(max_calls=3))
    model, _, graph = free_form(meter, json.dumps(GOOD), JUDGED)
    decision = decide(graph, "llm", spent(judged_metrics(), calls=2, cost_usd=0.0), 2, meter=meter)
    assert len(model.calls) == 1 and decision.llm_calls == 1  # the answer; the judge's call would be the 4th
    assert not decision.fallback and decision.command.hyperparameters["learning_rate"] == 5e-4
    assert decision.reflection.judge == "rule"


def test_the_cost_cap_counts_the_runs_earlier_decisions():
    meter = CallMeter(PRICE, Caps(max_cost_usd=0.5))
    model, _, graph = free_form(meter, json.dumps(GOOD), JUDGED)
    decision = decide(graph, "llm", spent(judged_metrics(), calls=7, cost_usd=0.5), 2, meter=meter)
    assert model.calls == [] and decision.fallback_reason == "llm_cost_cap"
    assert run_spending(spent(judged_metrics(), calls=7, cost_usd=0.5).history) == (7, 0.5)


def test_the_expert_form_counts_its_scoring_and_rationale_requests_and_skips_a_retry_at_the_cap():
    # A rationale that copies nothing but is too short counts as copied: the chooser would ask once more.
    server = ScoringServer(lambda prompt, option: -1.0, " yes.")
    try:
        m = overfitting_state()
        meter = CallMeter(PRICE, Caps(max_calls=3))
        policy = ExpertPolicy(ScoredChooser(server.base_url, "m", timeout_s=5, meter=meter), "m")
        assert len(plan_decision(m).candidates) > 1
        decision = decide(build_agent_graph(list(CORE_NODES), policy), "llm", m, 2, meter=policy.meter)
        paths = [path for path, _ in server.requests]
        # Content-free scoring, scoring, one rationale: the second rationale would be the 4th call.
        assert paths == ["/reflectnet/score", "/reflectnet/score", "/v1/completions"]
        assert not decision.fallback and decision.llm_calls == 3
        assert (decision.prompt_tokens, decision.completion_tokens) == (200, 12)  # only the completion says usage
        server.requests.clear()
        decision = decide(build_agent_graph(list(CORE_NODES), policy), "llm", spent(m, 3, 0.0), 2, meter=policy.meter)
        assert server.requests == [] and decision.fallback_reason == "llm_call_cap"
    finally:
        server.close()
