"""The expert decision form (agents.controllers.expert, agents.expert.choosers): calibrated choice against a scripted scoring server on loopback,
the chat choice, copied rationales, the policy through the real graph, and the reflector's contradiction flag.
The real embedded model is exercised end to end in tests/e2e/test_llm.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.chat import ChatCaller
from agents.controllers.expert import ExpertPolicy
from agents.expert.candidates import plan_decision
from agents.expert.choosers import ChatChooser, ChooserError, ScoredChooser
from agents.expert.rationale import copied, unsupported_numbers
from agents.graph import build_agent_graph, pipeline_with
from agents.prompts import NEUTRAL_STATE, state_summary
from agents.nodes.reflector import judge_previous_decision, make_reflector
from agents.service import decide
from bench.guidance import Case, case_metrics
from bus.messages import Instruction, UpdateCommand
from tests.helpers import ScriptedOpenAI, ScriptedReply, llm_settings


class ScoringServer:
    """``/reflectnet/score`` answering ``logprob(prompt, option)`` per option token (one token per word), and
    ``/v1/completions`` answering ``completion``; every request is kept."""

    def __init__(self, logprob, completion: str):
        self.requests: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # http.server's name for the POST handler
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body))
                if self.path == "/reflectnet/score":
                    reply = {"logprobs": [[logprob(body["prompt"], o)] * len(o.split()) for o in body["options"]]}
                else:
                    reply = {
                        "choices": [{"text": completion}],
                        "usage": {"prompt_tokens": 200, "completion_tokens": 12},
                    }
                payload = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def overfitting_state():
    return case_metrics(Case("evidence", "overfitting", None), 0)


def test_the_choice_is_calibrated_against_the_content_free_prompt():
    # Raw scores favour "raise dropout" (-1.0 vs -1.5), but it is as likely with no state at all (-0.5 vs -3.0):
    # calibrated, "halve the learning rate" wins by (-1.5 + 3.0) - (-1.0 + 0.5) = 2.0.
    def logprob(prompt, option):
        neutral = NEUTRAL_STATE in prompt and "Epoch" not in prompt
        return {"dropout": -0.5 if neutral else -1.0, "learning": -3.0 if neutral else -1.5}[
            "dropout" if "dropout" in option else "learning"
        ]

    server = ScoringServer(logprob, " is ahead of val_acc by 0.121 this epoch, more than the 0.105 before.")
    try:
        chooser = ScoredChooser(server.base_url, "m", timeout_s=5)
        m = overfitting_state()
        plan = plan_decision(m)
        choice = chooser.choose(m, plan)
        assert plan.candidates[choice.index].key == "learning_rate:down"
        assert choice.margin == pytest.approx(2.0)
        assert choice.rationale == (
            "We should halve the learning rate, because train_acc is ahead of val_acc by 0.121 this epoch, more than the "
            "0.105 before."  # the widening gap's subject opens the reason (reason_opening)
        )
        assert not choice.details["rationale_copied"] and choice.details["rationale_unsupported_numbers"] == []
        chooser.choose(m, plan)  # the content-free scores are cached: one more scoring request, not two
        paths = [path for path, _ in server.requests]
        assert paths.count("/reflectnet/score") == 3 and paths.count("/v1/completions") == 2
    finally:
        server.close()


def test_a_rationale_that_repeats_the_prompt_is_flagged_as_copied_and_invented_numbers_are_found():
    m = overfitting_state()
    prompt = state_summary(m, "the train/validation gap widened from 0.105 to 0.121")
    assert copied("the train/validation gap widened from 0.105 to 0.121", prompt)
    assert copied("optional operations", prompt)  # too short to be a reason
    assert not copied("the model memorises its training set, so more dropout should close the gap", prompt)
    assert unsupported_numbers("val_acc is 0.878 but the learning rate is 0.7, after 3 epochs", prompt) == ["0.7"]
    assert unsupported_numbers("val_acc rose from 0.88 to 1.", prompt) == ["1"]
    assert unsupported_numbers("val_acc fell to 0.88, not 0.8779", prompt) == ["0.8779"]  # 0.878 cited at 2 decimals


def test_the_chat_chooser_takes_a_listed_action_and_refuses_others():
    m = overfitting_state()
    plan = plan_decision(m)
    good = ScriptedReply(
        json.dumps({"choice": "dropout:up", "rationale": "Training accuracy runs away from validation."})
    )
    bad = ScriptedReply(json.dumps({"choice": "learning_rate:up", "rationale": "faster"}))
    with ScriptedOpenAI({"controller": [good, bad]}, {"controller": good}) as server:
        from agents.chat import make_chat_model, response_formats

        settings = llm_settings(provider="openai", base_url=server.base_url, model="m", timeout_s=5)
        chooser = ChatChooser(ChatCaller(make_chat_model(settings), response_formats(settings), 0.0, 128))
        assert plan.candidates[chooser.choose(m, plan).index].key == "dropout:up"
        with pytest.raises(ChooserError, match="no listed action"):
            chooser.choose(m, plan)
        (_, body), _ = server.requests
        assert "dropout:up" in json.dumps(body) and "learning_rate:down" in json.dumps(body)


class FixedChooser:
    """A chooser that picks the last candidate (a fake: the policy and graph around it are real)."""

    def choose(self, m, plan):
        from agents.expert.choosers import Choice

        return Choice(len(plan.candidates) - 1, "We should do this, because the evidence says so this epoch.",
                      [0.0] * len(plan.candidates), 0.5 if len(plan.candidates) > 1 else None, 10, 5, {}, prompt="summary")  # fmt: skip


def test_the_expert_policy_answers_through_the_validator_and_records_its_choice():
    graph = build_agent_graph(pipeline_with([]), ExpertPolicy(FixedChooser(), "m"))
    m = case_metrics(Case("explicit", "steady", "set the learning rate to 10"), 0)
    decision = decide(graph, "llm", m, max_repairs=2)
    assert decision.command.hyperparameters["learning_rate"] == pytest.approx(3e-3)  # the trust region: x3 at most
    assert decision.clamped["learning_rate"]["from"] == 0.1  # the knob's hard bound, then the clamp recorded
    assert decision.instruction_outcome == "followed" and decision.held is False
    assert decision.choice == "learning_rate:up" and decision.prompt == "summary"
    (note,) = [n for n in decision.notes if n.get("action") == "expert_choice"]
    assert (
        note["intent"] == "explicit: learning_rate to 10" and note["source"] == "instruction" and "prompt" not in note
    )
    gap = decide(graph, "llm", overfitting_state(), max_repairs=2)
    assert gap.choice == "learning_rate:down" and gap.choice_margin == 0.5 and gap.instruction_outcome is None


class Judge:
    def __init__(self, verdict):
        self.verdict = verdict

    def judge(self, m, rule, change_text):
        from agents.controllers.llm import Judgement

        return Judgement(rule.model_copy(update={"verdict": self.verdict, "text": "fine", "judge": "m"}))


@pytest.mark.parametrize(("model", "flagged"), [("beneficial", True), ("neutral", False), ("harmful", False)])
def test_a_verdict_that_contradicts_the_measurement_is_flagged_and_not_fed_back(model, flagged):
    m = case_metrics(Case("evidence", "diverging", None), 0)  # the objective fell far beyond the noise band
    previous = UpdateCommand(hyperparameters=m.hyperparameters, alpha=0.4, rationale="r")
    m = m.model_copy(update={"previous_command": previous})
    assert judge_previous_decision(m).verdict == "harmful"
    reflection = make_reflector(Judge(model))({"metrics": m})["reflection"]
    assert reflection.contradicts_measurement is flagged
    assert reflection.verdict == ("harmful" if flagged else model)
    assert reflection.model_verdict == ("beneficial" if flagged else None)


def test_the_instruction_is_in_the_summary_the_model_reads():
    m = overfitting_state()
    m = m.model_copy(
        update={"instruction": Instruction(instruction_id="i", text="be gentle", source="say", received_at=0)}
    )
    assert 'The user says: "be gentle"' in state_summary(m, "reason")


def test_a_copied_rationale_is_asked_for_once_more_and_the_copy_stays_flagged():
    m = overfitting_state()
    plan = plan_decision(m)
    copy = " " + plan.signal.reason  # the evidence line of the prompt, word for word
    server = ScoringServer(lambda prompt, option: -1.0, copy)
    try:
        choice = ScoredChooser(server.base_url, "m", timeout_s=5).choose(m, plan)
    finally:
        server.close()
    completions = [body for path, body in server.requests if path == "/v1/completions"]
    assert [body["temperature"] for body in completions] == [0.0, 0.7]
    assert choice.details["rationale_copied"]  # both tries copied: recorded, visible in SQL


def test_the_reason_opens_with_the_measured_signal_or_the_users_request():
    from agents.expert.rationale import reason_opening

    plateau = case_metrics(Case("evidence", "plateau", None), 0)
    assert reason_opening(plateau, plan_decision(plateau)) == "val_acc has not"
    assert reason_opening(overfitting_state(), plan_decision(overfitting_state())) == "train_acc"
    told = case_metrics(Case("explicit", "steady", "halve the learning rate"), 0)
    assert reason_opening(told, plan_decision(told)) == "you asked, and val_acc rose"
    regression = case_metrics(Case("evidence", "steady", None, task="diabetes"), 0)
    assert reason_opening(regression, plan_decision(regression)) == "val_rmse fell"  # lower is better


def test_a_timed_out_server_call_is_sent_once_more_then_fails_in_one_line():
    import httpx

    from agents.expert.choosers import ChooserError

    calls = []

    def stalls_first(request):
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(200, json={"choices": [{"text": " the gap widened."}], "usage": {}})

    chooser = ScoredChooser("http://server/v1", "m", timeout_s=5)
    chooser.http = httpx.Client(transport=httpx.MockTransport(stalls_first))
    assert chooser.complete("prompt", 0.0)[0] == "the gap widened."
    assert calls == ["/v1/completions", "/v1/completions"]

    def always_stalls(request):
        raise httpx.ReadTimeout("timed out", request=request)

    chooser.http = httpx.Client(transport=httpx.MockTransport(always_stalls))
    with pytest.raises(ChooserError, match=r"^/v1/completions: ReadTimeout: timed out \(twice\)$"):
        chooser.complete("prompt", 0.0)
