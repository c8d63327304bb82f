"""How the expert form justifies a decision (issue 18, must-have 5): "because you asked" only for a move the reading
of the instruction made, and a number cited under a metric's name only when that metric took it. No model: the
rationale checks read text, and the candidates are the lexicon's and the rule's."""

from __future__ import annotations

import pytest

import agents.expert.candidates as candidates
from agents.expert.candidates import from_reading, plan_decision
from agents.expert.instructions import Intent, Move
from agents.expert.rationale import cited_metrics, metric_values, reason_opening, unsupported_numbers
from agents.expert.reading import Reading, read
from agents.prompts import state_summary
from bench.guidance import Case, case_metrics
from bus.messages import Instruction


def with_instruction(m, text, first=True):
    instruction = Instruction(instruction_id="i", text=text, source="flag", received_at=0.0)
    return m.model_copy(update={"instruction": instruction, "instruction_first_decision": first})


def state(name: str):
    return case_metrics(Case("evidence", name, None), 0)


# ------------------------------------------------------------------ "because you asked"


@pytest.mark.parametrize(
    "text", ['{"learning_rate": 100, "alpha": 1}', "降低学习率", "baissez le taux d'apprentissage, s'il vous plaît"]
)
@pytest.mark.parametrize("name", ["overfitting", "plateau", "diverging", "steady"])
def test_a_move_the_reader_did_not_make_is_not_justified_as_asked(text, name):
    # issue 18: these instructions each produced dropout:up "because you asked"
    m = with_instruction(state(name), text)
    plan = plan_decision(m)
    reading = read(text, m.task)
    for c in plan.candidates:
        if not from_reading(c, reading):
            assert not c.asked and "the user asked" not in c.reason
            assert not reason_opening(m, plan, c).startswith("you asked")


def test_only_the_readings_own_moves_open_with_you_asked():
    m = with_instruction(state("overfitting"), "halve the learning rate")
    plan = plan_decision(m)
    (only,) = plan.candidates
    assert only.key == "learning_rate:down" and only.asked and only.reason.startswith("the user asked")
    assert reason_opening(m, plan, only) == "you asked, and train_acc"
    goal = plan_decision(with_instruction(state("steady"), "it is overfitting, fight it"))
    assert [c.key for c in goal.candidates] == ["dropout:up", "learning_rate:down"] and all(c.asked for c in goal.candidates)
    hold = plan_decision(with_instruction(state("steady"), "change nothing"))
    assert hold.candidates[0].asked
    # the evidence chose it, even where the instruction in force agrees: not "you asked"
    later = plan_decision(with_instruction(state("plateau"), "lower the learning rate", first=False))
    assert later.source == "evidence" and not any(c.asked for c in later.candidates)
    assert reason_opening(state("plateau"), later) == "val_acc has not"


def test_a_goal_offers_only_the_moves_the_reading_left_free(monkeypatch):
    # "fight overfitting but leave dropout alone": the reading's goal moves are the learning rate only, and the
    # planner offers no other goal move, so nothing is justified by words the user did not say.
    intent = Intent("goal", (Move("dropout", 0),), goal="less overfitting", goal_moves=(("learning_rate", -1),))
    monkeypatch.setattr(candidates, "read", lambda text, spec, layers=None: Reading(text, intent, 0.9, "test"))
    m = with_instruction(state("overfitting"), "it is overfitting")
    plan = plan_decision(m)
    (only,) = plan.candidates
    assert plan.source == "instruction" and only.key == "learning_rate:down"
    assert only.asked and "the user asked" in only.reason


def test_a_reading_without_confidence_asks_nothing():
    explicit = Intent("explicit", moves=(Move("dropout", 1),))
    dropout_up = candidates.apply_moves(state("steady"), explicit.moves)
    assert from_reading(dropout_up, Reading("x", explicit, 1.0, "test"))
    assert not from_reading(dropout_up, Reading("x", explicit, 0.2, "test"))
    assert not from_reading(dropout_up, Reading("x", Intent("explicit", moves=(Move("learning_rate", 1),)), 1.0, "t"))


# ------------------------------------------------------------------ numbers under the wrong metric's name


def test_a_number_under_the_wrong_metrics_name_is_flagged_like_an_invented_one():
    m = state("overfitting")  # val_acc 0.878 now, train_acc 0.999; the prompt holds val_acc's, not train_acc's
    prompt = state_summary(m, "train_acc 0.999 vs val_acc 0.878")
    values = metric_values(m)
    assert values["val_acc"][-1] == 0.878 and values["train_acc"][-1] == 0.999
    assert unsupported_numbers("val_acc is 0.878 this epoch", prompt, values) == []  # the right name
    assert unsupported_numbers("train_acc is 0.878 this epoch", prompt, values) == ["0.878"]  # the wrong name
    assert unsupported_numbers("train_acc is 0.93 this epoch", prompt, values) == ["0.93"]  # in no prompt: as before
    assert unsupported_numbers("train_acc is 0.878 this epoch", prompt) == []  # without the values: the old check
    assert unsupported_numbers("train acc: 0.878", prompt, values) == ["0.878"]  # "train acc" names it too
    assert unsupported_numbers("val_acc fell from 0.88 to 0.878", prompt, values) == []
    assert unsupported_numbers("val_acc fell from 0.88 to 0.999", prompt, values) == ["0.999"]


@pytest.mark.parametrize(
    "text",
    [
        "train_acc is ahead of val_acc by 0.121 this epoch",  # a gap, not val_acc's value
        "the gap between train_acc and val_acc is 0.121",
        "train_acc 0.999 is far above val_acc, whose best was 0.878",
        "val_acc has not improved for 2 epochs",
    ],
)
def test_numbers_not_cited_as_a_metrics_value_are_not_tied_to_it(text):
    m = state("overfitting")
    prompt = state_summary(m, "train_acc 0.999 vs val_acc 0.878")
    assert unsupported_numbers(text, prompt, metric_values(m)) == []


def test_cited_metrics_ties_a_number_to_the_name_before_it():
    text = "val_acc is 0.88, train_acc 0.99; the learning rate is 0.001"
    cited = cited_metrics(text, ["val_acc", "train_acc"])
    assert {text[i:].split()[0].rstrip(",;"): name for i, name in cited.items()} == {"0.88": "val_acc", "0.99": "train_acc"}
