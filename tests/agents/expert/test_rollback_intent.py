"""'Go back to the best epoch' read as a rollback (in English, German, Spanish, French), said back, proposed once by
the expert form and never put back by the guard; the expert form's rollback candidates after a collapse."""

import pytest

from agents.expert.candidates import plan_decision
from agents.expert.outcome import held, instruction_outcome
from agents.expert.reading import read
from agents.nodes.guard import guard_command
from bus.messages import Instruction, UpdateCommand
from tasks.mnist import SPEC
from tests.helpers import make_metrics


def with_instruction(m, text, first=True):
    instruction = Instruction(instruction_id="i", text=text, source="flag", received_at=0.0)
    return m.model_copy(update={"instruction": instruction, "instruction_first_decision": first})


@pytest.mark.parametrize("text", [
    "go back to the best epoch", "roll back", "restore the best checkpoint", "revert to the best weights",
    "please rollback, it fell apart", "geh zurück zur besten Epoche", "stelle die besten Gewichte wieder her",
    "vuelve a la mejor época", "restaura los mejores pesos", "reviens à la meilleure époque",
    "restaure les meilleurs poids",
])  # fmt: skip
def test_a_rollback_is_read_and_said_back(text):
    reading = read(text, SPEC)
    assert reading.understood and reading.intent.rollback, reading
    assert reading.said_back(SPEC) == "read as: roll back to the best epoch so far at the next decision"
    assert reading.intent.words() == "explicit: rollback"


@pytest.mark.parametrize("text", ["don't roll back", "return the learning rate to 1e-3", "keep the best settings",
                                  "halve the learning rate"])  # fmt: skip
def test_other_instructions_ask_no_rollback(text):
    assert not read(text, SPEC).intent.rollback


def test_a_rollback_with_a_move_reads_both():
    reading = read("roll back to the best epoch and halve the learning rate", SPEC)
    assert reading.intent.rollback and reading.intent.words() == "explicit: rollback, learning_rate down"
    assert reading.said_back(SPEC) == (
        "read as: roll back to the best epoch so far, learning_rate × 0.5 at the next decision, then kept"
    )


def test_the_expert_form_rolls_back_once_at_the_first_decision():
    m = with_instruction(make_metrics([0.60, 0.75, 0.80, 0.79, 0.79]), "go back to the best epoch")
    (candidate,) = plan_decision(m).candidates
    assert candidate.rollback and candidate.key == "rollback" and candidate.asked
    assert candidate.changes == "rollback to epoch 3"
    later = plan_decision(m.model_copy(update={"instruction_first_decision": False}))
    assert not any(c.rollback for c in later.candidates)


def test_the_guard_keeps_an_asked_rollback_and_the_outcome_judges_it():
    m = with_instruction(make_metrics([0.60, 0.75, 0.80, 0.79, 0.79]), "go back to the best epoch")
    values = {"dropout": 0.2, "learning_rate": 1e-3}
    rollback = UpdateCommand(hyperparameters=values, alpha=0.4, rollback=True)
    assert guard_command(m, rollback, read("go back to the best epoch", SPEC)).command.rollback
    assert instruction_outcome(m, rollback) == "followed" and held(m, rollback) is False
    assert instruction_outcome(m, rollback.model_copy(update={"rollback": False})) == "ignored"


def test_under_change_nothing_the_guard_puts_a_rollback_back():
    m = with_instruction(make_metrics([0.60, 0.80, 0.50]), "change nothing")
    command = UpdateCommand(hyperparameters={"dropout": 0.2, "learning_rate": 1e-3}, alpha=0.4, rollback=True)
    guarded = guard_command(m, command, read("change nothing", SPEC))
    assert guarded.put_back == ("weights",) and guarded.command.rollback is False


def test_after_a_collapse_the_expert_form_offers_rollbacks_with_a_lower_learning_rate():
    plan = plan_decision(make_metrics([0.60, 0.75, 0.80, 0.60], lr=1e-2))
    assert plan.signal.kind == "collapsed"
    assert [c.key for c in plan.candidates] == ["rollback+learning_rate:down", "rollback+learning_rate:down:third"]
    assert all(c.rollback for c in plan.candidates)
    assert plan.candidates[0].values["learning_rate"] == pytest.approx(5e-3)
    assert plan.candidates[0].changes == "rollback to epoch 3, learning_rate 0.01 -> 0.005"
