"""The LLM controller scripted through every failure with langchain_core's GenericFakeChatModel.

Each case runs the real graph (prompter -> controller -> validator <-> repairer -> reflector) with the
real ChatCaller and LLMPolicy; only the chat model is scripted. Every case must end in an applied,
valid command, with the repair or the fallback recorded.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage

from agents.graph import CORE_NODES, build_agent_graph
from agents.chat import ChatCaller, make_chat_model, response_formats, scrub
from agents.config import LLMSettings
from agents.controllers.llm import LLMJudge, LLMPolicy
from agents.service import decide
from bus.messages import UpdateCommand
from tests.helpers import llm_settings, make_command, make_metrics, make_regression_metrics

GOOD = {"dropout": 0.25, "learning_rate": 5e-4, "alpha": 0.3, "rationale": "val acc stalls"}
PREVIOUS = make_command(dropout=0.25, learning_rate=5e-4, alpha=0.3, rationale="val acc stalls")


class RecordingFake(GenericFakeChatModel):
    """GenericFakeChatModel that also keeps every message list and response_format it was given."""

    calls: list = []

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs):
        self.calls.append((messages, kwargs.get("response_format")))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def scripted(*answers: str) -> RecordingFake:
    return RecordingFake(
        messages=iter(
            [
                AIMessage(a, usage_metadata={"input_tokens": 100, "output_tokens": 20, "total_tokens": 120})
                for a in answers
            ]
        ),
        calls=[],
    )


def run_llm(model, metrics=None, max_repairs=2, judge_model=None):
    policy = LLMPolicy(ChatCaller(model, [None]), "fake-model")
    judge = LLMJudge(ChatCaller(judge_model, [None]), "fake-judge") if judge_model is not None else None
    return run_graph(policy, judge, metrics, max_repairs)


def run_graph(policy, judge=None, metrics=None, max_repairs=2, names=None):
    graph = build_agent_graph(names or list(CORE_NODES), policy, judge)
    decision = decide(graph, policy.name, metrics or make_metrics([0.80, 0.85]), max_repairs)
    assert isinstance(decision.command, UpdateCommand)  # always an applicable, valid command
    UpdateCommand.model_validate(decision.command.model_dump())
    return decision


def test_valid_json_at_first_try_records_tokens_and_raw_text():
    model = scripted(json.dumps(GOOD))
    decision = run_llm(model)
    assert decision.valid and decision.repair_attempts == 0 and not decision.fallback
    assert decision.command.hyperparameters["learning_rate"] == 5e-4 and decision.controller == "llm"
    assert (decision.prompt_tokens, decision.completion_tokens) == (100, 20)
    assert decision.raw_output == json.dumps(GOOD) and "Schema:" in decision.prompt


@pytest.mark.parametrize(
    "bad, error",
    [
        ("Lower the learning rate a little.", "not valid JSON"),
        ('{"dropout": 0.25, "learning_rate": 0.0005, "alph', "is cut off: the text ends inside a string"),
        ('{"dropout": 0.25, "learning_rate": 0.00', "the text ends after the field 'learning_rate'"),
        (json.dumps({**GOOD, "dropout": "0.3 or so"}), "dropout must be a number"),
        (json.dumps({**GOOD, "learning_rate": -0.01}), "learning_rate=-0.01 is not a valid setting"),
        (json.dumps({**GOOD, "alpha": 7}), "alpha=7 is not a valid setting"),
        ('{"dropout": NaN, "learning_rate": 0.0005, "alpha": 0.3, "rationale": ""}', "dropout must be finite"),
        (
            json.dumps({**GOOD, "weight_modulation": [{"layer": "fc.7.weight", "op": "scale", "factor": 0.98}]}),
            "unknown layer 'fc.7.weight'",
        ),
        (
            json.dumps({**GOOD, "weight_modulation": {"fc.3.weight": [[0.0] * 128] * 9}}),
            "has shape [9, 128], expected [10, 128]",
        ),
        (
            json.dumps({**GOOD, "weight_modulation": [{"layer": "fc.3.weight", "op": "melt", "factor": 2}]}),
            "must have op one of",
        ),
        (json.dumps({**GOOD, "weight_modulation": {f"fc.{i}.weight": [1.0] for i in range(40)}}), "at most 16 allowed"),
    ],
)
def test_each_failure_is_sent_back_with_its_error_and_repaired(bad, error):
    model = scripted(bad, json.dumps(GOOD))
    decision = run_llm(model)
    assert not decision.valid and not decision.fallback and decision.repair_attempts == 1
    assert decision.command.hyperparameters["learning_rate"] == 5e-4
    repair_messages, _ = model.calls[1]
    assert repair_messages[-2].content == bad[:4000]  # the rejected answer, then the exact errors
    assert error in repair_messages[-1].content
    assert decision.notes[0]["action"] == "re-ask" and any(error in e for e in decision.notes[0]["errors"])


def test_an_oversized_answer_is_rejected_before_parsing():
    huge = json.dumps({**GOOD, "rationale": "x" * (17 * 1024 * 1024)})
    model = scripted(huge, json.dumps(GOOD))
    decision = run_llm(model)
    assert decision.repair_attempts == 1 and decision.notes[0]["action"] == "re-ask"
    assert any("exceeds 16777216" in e for e in decision.notes[0]["errors"])
    assert len(model.calls[1][0][-2].content) == 4000  # only a bounded slice goes back to the model
    assert len(decision.notes[0]["answer"]) == 500


def test_valid_values_beyond_the_trust_region_are_clamped_not_repaired():
    decision = run_llm(scripted(json.dumps({**GOOD, "learning_rate": 0.05, "dropout": 0.8})))
    assert decision.valid and decision.repair_attempts == 0
    assert decision.command.hyperparameters == {"dropout": pytest.approx(0.4), "learning_rate": pytest.approx(3e-3)}
    assert decision.clamped["dropout"] == {"from": 0.8, "to": pytest.approx(0.4)}


def test_a_server_that_writes_every_number_as_a_string_is_understood():
    as_strings = {"dropout": "0.2", "learning_rate": "5e-4", "alpha": "0.4", "rationale": "val acc stalls"}
    decision = run_llm(scripted(json.dumps(as_strings)))
    assert decision.valid and not decision.fallback and decision.repair_attempts == 0
    assert decision.command.hyperparameters == {"dropout": 0.2, "learning_rate": 5e-4} and decision.command.alpha == 0.4


def test_compact_operations_are_validated_capped_and_seeded():
    ops = [
        {"layer": "fc.3.weight", "op": "scale", "factor": 0.5},
        {"layer": "conv.0.weight", "op": "noise", "scale": 0.01},
    ]
    decision = run_llm(scripted(json.dumps({**GOOD, "weight_modulation": ops})))
    assert decision.valid
    scale, noise = decision.command.weight_ops
    assert (scale.layer, scale.op, scale.value) == ("fc.3.weight", "scale", 0.95)
    assert decision.clamped["weight_ops.fc.3.weight.factor"] == {"from": 0.5, "to": 0.95}
    assert (noise.op, noise.value) == ("noise", 0.01) and noise.seed != 0


def test_a_model_that_never_becomes_valid_falls_back_keeping_the_valid_parts():
    bad = json.dumps({"dropout": "lots", "learning_rate": 5e-4, "alpha": 0.5, "rationale": "x"})
    model = scripted(bad, bad, bad)
    decision = run_llm(model, max_repairs=2)
    assert decision.fallback and not decision.valid and decision.repair_attempts == 2
    assert "still invalid after 3 answer(s)" in decision.fallback_reason
    assert decision.command.hyperparameters == {"dropout": 0.2, "learning_rate": 5e-4} and decision.command.alpha == 0.5
    assert len(model.calls) == 3


class Unreachable(GenericFakeChatModel):
    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        raise openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions"))


def test_an_unreachable_model_falls_back_at_once_without_repair_rounds():
    decision = run_llm(Unreachable(messages=iter([])))
    assert decision.fallback and decision.repair_attempts == 0
    assert decision.fallback_reason.startswith("model call failed: ") and "Connection" in decision.fallback_reason
    assert decision.command.hyperparameters == {"dropout": 0.2, "learning_rate": 1e-3}


def test_reflection_comes_from_the_model_with_the_rule_kept_beside_it():
    metrics = make_metrics([0.80, 0.85, 0.83], previous_command=PREVIOUS)
    judge = scripted(json.dumps({"verdict": "neutral", "text": "Accuracy barely moved.\nSecond line"}))
    decision = run_llm(scripted(json.dumps(GOOD)), metrics=metrics, judge_model=judge)
    r = decision.reflection
    assert (r.verdict, r.rule_verdict, r.judge, r.text) == (
        "neutral",
        "harmful",
        "fake-judge",
        "Accuracy barely moved.",
    )
    assert "0.8500 to 0.8300" in judge.calls[0][0][-1].content


def test_the_judge_is_told_the_objective_its_direction_and_noise_band():
    previous = make_command(learning_rate=5e-4, dropout=0.0, weight_decay=0.0)
    metrics = make_regression_metrics([60.0, 58.0, 57.2], lr=5e-4, lrs=[1e-3, 1e-3, 5e-4], previous_command=previous)
    answer = {"learning_rate": 5e-4, "dropout": 0.0, "weight_decay": 0.0, "alpha": 0.4, "rationale": "keep"}
    judge = scripted(json.dumps({"verdict": "beneficial", "text": "The error fell by 0.8."}))
    decision = run_llm(scripted(json.dumps(answer)), metrics=metrics, judge_model=judge)
    assert (decision.reflection.verdict, decision.reflection.rule_verdict) == ("beneficial", "beneficial")
    prompt = judge.calls[0][0][-1].content
    assert prompt.startswith(decision.prompt.split("\n\nEpoch 3 of 20")[0])  # one cached prefix for both calls
    assert (
        "the decision was changing learning_rate 1.00e-03 -> 5.00e-04. val_rmse (lower is better) went from 58.00 "
        "to 57.20 (-0.80; a change within 0.5 is noise); train_rmse is now 55.20." in prompt
    )


def test_a_failing_judge_falls_back_to_the_rule():
    metrics = make_metrics([0.80, 0.85, 0.83], previous_command=PREVIOUS)
    decision = run_llm(scripted(json.dumps(GOOD)), metrics=metrics, judge_model=scripted('{"verdict": "great"}'))
    assert decision.reflection.judge == "rule" and decision.reflection.verdict == "harmful"
    (note,) = [n for n in decision.notes if n.get("action") == "rule_fallback"]
    assert "got 'great'" in note["reason"] and "0.8500 to 0.8300" in note["prompt"]


def test_a_judge_answer_in_a_reasoning_block_with_a_trailing_comma_is_read_and_noted():
    metrics = make_metrics([0.80, 0.85, 0.83], previous_command=PREVIOUS)
    judge = scripted('<think>it dropped 2 points</think>{"verdict": "harmful", "text": "Accuracy fell 2 points.",}')
    decision = run_llm(scripted(json.dumps(GOOD)), metrics=metrics, judge_model=judge)
    assert (decision.reflection.verdict, decision.reflection.text) == ("harmful", "Accuracy fell 2 points.")
    (note,) = [n for n in decision.notes if n["node"] == "reflector"]
    assert note["action"] == "model_verdict" and note["reasoning"] == "it dropped 2 points"
    assert note["lenient_json"][0].startswith("not strict JSON: Expecting property name")


class RejectsJsonSchema(RecordingFake):
    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        form = kwargs.get("response_format")
        if form and form["type"] == "json_schema":
            request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
            raise openai.BadRequestError(
                "response_format json_schema unsupported", response=httpx.Response(400, request=request), body=None
            )
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def test_structured_output_degrades_to_the_form_the_server_accepts_and_remembers_it():
    settings = llm_settings(provider="openai", base_url="http://127.0.0.1:1/v1", model="m")
    model = RejectsJsonSchema(messages=iter([AIMessage(json.dumps(GOOD)), AIMessage(json.dumps(GOOD))]), calls=[])
    caller = ChatCaller(model, response_formats(settings))
    schema = {"type": "object"}
    first = caller([], schema)
    assert first.text == json.dumps(GOOD) and first.adaptations == [
        "HTTP 400 refused response_format json_schema: response_format json_object from now on"
    ]
    second = caller([], schema)
    assert second.error is None and second.adaptations == []
    assert [form for _, form in model.calls] == [{"type": "json_object", "schema": schema}] * 2


class Raises(GenericFakeChatModel):
    """A chat model whose every call raises ``error``."""

    error: Exception

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        KeyError("choices"),
        TypeError("'NoneType' object is not iterable"),
        json.JSONDecodeError("Expecting value", "<html>", 0),
        openai.APIResponseValidationError(
            httpx.Response(200, request=httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")), body=None
        ),
    ],
)
def test_any_exception_from_the_model_call_is_a_model_error_with_the_prompt_kept(error):
    decision = run_llm(Raises(messages=iter([]), error=error))
    assert decision.fallback and decision.repair_attempts == 0
    assert decision.fallback_reason.startswith(f"model call failed: {type(error).__name__}: ")
    assert "Schema:" in decision.prompt  # the prompt that failed is kept for the record
    assert decision.notes[0] == {
        "node": "controller",
        "action": "model_call",
        "attempt": 1,
        "finish_reason": None,
        "error": decision.fallback_reason.removeprefix("model call failed: "),
    }


class ExplodingPolicy:
    name = "llm"

    def propose(self, state):
        raise RuntimeError("the client library broke")


def test_a_policy_that_raises_is_a_model_error_not_a_graph_failure():
    decision = run_graph(ExplodingPolicy())
    assert decision.fallback and decision.fallback_reason == "model call failed: RuntimeError: the client library broke"
    assert decision.command.hyperparameters == {"dropout": 0.2, "learning_rate": 1e-3} and decision.command.alpha == 0.4


class ExplodingJudge:
    name = "judge"

    def judge(self, m, rule, change_text):
        raise RuntimeError("judge crashed")


def test_a_judge_that_raises_keeps_the_validated_command_and_the_rule_verdict():
    metrics = make_metrics([0.80, 0.85, 0.83], previous_command=PREVIOUS)
    policy = LLMPolicy(ChatCaller(scripted(json.dumps(GOOD)), [None]), "fake-model")
    decision = run_graph(policy, ExplodingJudge(), metrics)
    assert decision.valid and not decision.fallback and decision.command.hyperparameters["learning_rate"] == 5e-4
    assert decision.reflection.judge == "rule" and decision.reflection.verdict == "harmful"
    (note,) = [n for n in decision.notes if n["node"] == "reflector"]
    assert note["action"] == "rule_fallback" and note["reason"] == "judge failed: RuntimeError: judge crashed"


def test_the_api_key_is_read_from_the_environment_and_scrubbed_from_errors(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdefghijklmnop")
    model = make_chat_model(llm_settings(provider="openai", base_url="http://127.0.0.1:1/v1", model="m"))
    assert model.openai_api_key.get_secret_value() == "sk-test-abcdefghijklmnop"
    assert "sk-test" not in repr(model) and "sk-test" not in str(LLMSettings.model_fields)
    assert scrub("401: bad key sk-test-abcdefghijklmnop") == "401: bad key ***"
