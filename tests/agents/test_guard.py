"""The instruction guard (agents.nodes.guard): a confident reading of the instruction in force is a constraint on
every controller, applied after the whole graph by agents.service.decide."""

import json
import time

import pytest

from agents.controllers import ControllerAnswer
from agents.controllers.rules import HeuristicPolicy
from agents.expert.reading import read
from agents.graph import CORE_NODES, build_agent_graph, pipeline_with
from agents.nodes.guard import guard_command
from agents.service import decide
from bus.messages import Instruction, WeightOp
from tests.helpers import make_command, make_metrics


def instructed(metrics, text):
    said = Instruction(instruction_id="i-1", text=text, source="flag", received_at=time.time())
    return metrics.model_copy(update={"instruction": said})


class ScriptedPolicy:
    """A model in free form that always answers the same text."""

    def __init__(self, answer: dict, name: str = "scripted"):
        self.answer, self.name = json.dumps(answer), name

    def propose(self, state):
        return ControllerAnswer(self.answer)


RAISE_LR = {"dropout": 0.25, "learning_rate": 1.5e-3, "alpha": 0.4, "rationale": "raise the learning rate"}


def raise_the_learning_rate(state):
    """A user's node after the validator that raises the learning rate whatever the instruction."""
    command = state["command"]
    knobs = {**command.hyperparameters, "learning_rate": 1.5e-3}
    return {"command": command.model_copy(update={"hyperparameters": knobs})}


def test_a_move_against_the_reading_is_put_back_and_an_allowed_one_stays():
    m = instructed(make_metrics([0.80, 0.85], lr=1e-3, dropout=0.2), "lower the learning rate")
    proposed = make_command(dropout=0.3, learning_rate=2e-3, alpha=0.4)
    guarded = guard_command(m, proposed, read(m.instruction.text, m.task))
    assert guarded.put_back == ("learning_rate",)
    assert guarded.command.hyperparameters == {"dropout": 0.3, "learning_rate": 1e-3}  # dropout was not asked about
    assert "put back learning_rate" in guarded.command.rationale


def test_a_move_the_reading_asks_for_passes_untouched():
    m = instructed(make_metrics([0.80, 0.85], lr=1e-3), "lower the learning rate")
    proposed = make_command(dropout=0.2, learning_rate=5e-4, alpha=0.4)
    guarded = guard_command(m, proposed, read(m.instruction.text, m.task))
    assert not guarded.overridden and guarded.command is proposed


def test_under_a_hold_reading_nothing_moves_knobs_alpha_or_weights():
    m = instructed(make_metrics([0.80, 0.85], lr=1e-3, dropout=0.2, alpha=0.4), "change nothing")
    proposed = make_command(dropout=0.3, learning_rate=5e-4, alpha=0.6).model_copy(
        update={"weight_ops": [WeightOp(layer="fc.3.weight", op="noise", value=0.02)]}
    )
    guarded = guard_command(m, proposed, read(m.instruction.text, m.task))
    assert set(guarded.put_back) == {"dropout", "learning_rate", "alpha", "weights"}
    assert guarded.command.hyperparameters == {"dropout": 0.2, "learning_rate": 1e-3}
    assert guarded.command.alpha == 0.4 and not guarded.command.modulated_layers()


def test_a_reading_not_understood_constrains_nothing():
    m = instructed(make_metrics([0.80, 0.85], lr=1e-3), "blorp the frobnicator sideways")
    reading = read(m.instruction.text, m.task)
    assert not reading.understood
    proposed = make_command(dropout=0.3, learning_rate=2e-3, alpha=0.7)
    assert guard_command(m, proposed, reading).command is proposed


def test_a_free_form_model_raising_the_learning_rate_against_the_user_is_overridden_and_recorded():
    m = instructed(make_metrics([0.80, 0.85], lr=1e-3, dropout=0.2), "lower the learning rate")
    decision = decide(build_agent_graph(list(CORE_NODES), ScriptedPolicy(RAISE_LR)), "scripted", m, 2)
    assert decision.command.hyperparameters["learning_rate"] == 1e-3
    assert decision.command.hyperparameters["dropout"] == 0.25  # allowed: it stays
    assert decision.instruction_outcome == "overridden"
    assert decision.overridden_proposal["hyperparameters"]["learning_rate"] == 1.5e-3
    [note] = [n for n in decision.notes if n.get("action") == "instruction_guard"]
    assert note["put_back"] == ["learning_rate"] and note["reading"].startswith("read as:")


def test_the_guard_holds_after_a_users_node_too():
    m = instructed(make_metrics([0.80, 0.85], lr=1e-3, dropout=0.2), "lower the learning rate")
    keep = {**RAISE_LR, "learning_rate": 1e-3, "dropout": 0.2}
    nodes = pipeline_with(["tests.agents.test_guard:raise_the_learning_rate"])
    decision = decide(build_agent_graph(nodes, ScriptedPolicy(keep)), "scripted", m, 2)
    assert decision.command.hyperparameters["learning_rate"] == 1e-3
    assert decision.instruction_outcome == "overridden"


def test_without_an_instruction_the_same_proposal_is_applied():
    m = make_metrics([0.80, 0.85], lr=1e-3, dropout=0.2)
    decision = decide(build_agent_graph(list(CORE_NODES), ScriptedPolicy(RAISE_LR)), "scripted", m, 2)
    assert decision.command.hyperparameters["learning_rate"] == 1.5e-3
    assert decision.instruction_outcome is None and decision.overridden_proposal is None


@pytest.mark.parametrize("instruction", [None, "change nothing"])
def test_the_heuristic_on_a_plateau_changes_nothing_when_told_so(instruction):
    m = make_metrics([0.90, 0.90, 0.90, 0.90, 0.90, 0.90], lr=1e-3, dropout=0.2, alpha=0.4)
    m = instructed(m, instruction) if instruction else m
    policy = HeuristicPolicy()
    decision = decide(build_agent_graph(list(CORE_NODES), policy), policy.name, m, 2)
    if instruction is None:  # the plateau makes the heuristic move: the case below is not vacuous
        assert decision.command.hyperparameters != {"dropout": 0.2, "learning_rate": 1e-3}
    else:
        assert decision.command.hyperparameters == {"dropout": 0.2, "learning_rate": 1e-3}
        assert decision.command.alpha == 0.4 and decision.held


def test_a_replay_is_not_guarded():
    m = instructed(make_metrics([0.80, 0.85], lr=1e-3, dropout=0.2), "lower the learning rate")
    decision = decide(build_agent_graph(list(CORE_NODES), ScriptedPolicy(RAISE_LR, "replay")), "replay", m, 2)
    assert decision.command.hyperparameters["learning_rate"] == 1.5e-3 and decision.overridden_proposal is None
