"""A rollback in a command: parsed from a model's text, checked once (a recorded no-op when there is nothing to
return to), carried through replay's ``from_command`` and the answer text."""

import pytest

from agents.proposals.check import check_proposal, validate_answer
from agents.proposals.proposal import Proposal, WeightChange
from bus.messages import UpdateCommand, best_epoch
from tests.helpers import make_regression_metrics

KNOBS = {"learning_rate": 1e-3, "dropout": 0.0, "weight_decay": 0.0}


def test_a_rollback_to_an_earlier_best_epoch_passes_with_a_note():
    m = make_regression_metrics([60.0, 55.0, 90.0])
    checked = check_proposal(Proposal(KNOBS, 0.4, rollback=True), m)
    assert checked.errors == [] and checked.command.rollback is True
    assert checked.notes["rollback"] == "returns to epoch 2 (val_rmse 55)"


@pytest.mark.parametrize(("rmses", "why"), [([60.0, 55.0, 50.0], "epoch 3 is the best so far"),
                                            ([60.0], "epoch 1 is the best so far")])  # fmt: skip
def test_a_rollback_with_nothing_to_return_to_is_cleared_and_recorded(rmses, why):
    checked = check_proposal(Proposal(KNOBS, 0.4, rollback=True), make_regression_metrics(rmses))
    assert checked.errors == [] and checked.command.rollback is False
    assert checked.clamped["rollback"] == {"from": True, "to": False, "reason": f"nothing to return to: {why}"}


def test_weight_changes_proposed_with_a_rollback_are_dropped_and_recorded():
    m = make_regression_metrics([60.0, 55.0, 90.0])
    change = WeightChange("net.3.weight", "scale", 0.98, key="factor")
    checked = check_proposal(Proposal(KNOBS, 0.4, (change,), rollback=True), m)
    assert checked.command.rollback and checked.command.weight_ops is None
    assert checked.clamped["weight_modulation.rollback"]["from"] == ["net.3.weight"]


def test_a_rollback_that_is_not_a_bool_is_an_error():
    checked = check_proposal(Proposal(KNOBS, 0.4, rollback="yes please"), make_regression_metrics([60.0, 55.0, 90.0]))
    assert checked.command is None and checked.errors == ["rollback must be true or false, got str 'yes please'"]


@pytest.mark.parametrize(("field", "rollback"), [('"rollback": true', True), ('"rollback": "true"', True),
                                                 ('"rollback": false', False), ('"rollback": null', False), ("", False)])
def test_a_model_answer_asks_a_rollback_with_a_json_field(field, rollback):
    text = '{"learning_rate": 5e-4, "dropout": 0, "weight_decay": 0, "alpha": 0.4, ' + field + (", " if field else "")
    checked = validate_answer(text + '"rationale": "val_rmse collapsed"}', make_regression_metrics([60.0, 55.0, 90.0]))
    assert checked.errors == [] and checked.command.rollback is rollback
    assert "ignored_fields" not in checked.clamped


def test_a_recorded_command_replays_its_rollback_and_an_old_one_replays_none():
    command = UpdateCommand(hyperparameters=KNOBS, alpha=0.4, rationale="r", rollback=True)
    assert Proposal.from_command(command).rollback is True
    assert '"rollback": true' in Proposal.from_command(command).answer_text()
    old = UpdateCommand.model_validate({"hyperparameters": KNOBS, "alpha": 0.4})  # recorded before the field
    assert old.rollback is False and "rollback" not in Proposal.from_command(old).answer_text()


def test_the_best_epoch_is_the_earliest_best_and_never_nan():
    m = make_regression_metrics([60.0, float("nan"), 55.0, 55.0, 70.0])
    assert best_epoch(m.history, m.task).epoch == 3 and m.best.epoch == 3
    assert best_epoch(make_regression_metrics([float("nan")]).history, m.task) is None
