"""Graph routing through the real LangGraph graph, with scripted policies standing in for a model."""

import json

import pytest

from agents.graph import CORE_NODES, UnknownNodeError, build_agent_graph, pipeline_with, resolve_node
from agents.controllers import ControllerAnswer
from agents.controllers.rules import HeuristicPolicy
from agents.service import decide
from tests.helpers import make_command, make_metrics, make_regression_metrics

GOOD = json.dumps({"dropout": 0.25, "learning_rate": 5e-4, "alpha": 0.3, "rationale": "fine"})


class ScriptedPolicy:
    name = "scripted"

    def __init__(self, answers):
        self.answers = list(answers)
        self.seen_feedback = []

    def propose(self, state):
        self.seen_feedback.append(list(state.get("feedback", [])))
        return ControllerAnswer(self.answers.pop(0))


def run(policy, names=None, max_repairs=2, metrics=None):
    graph = build_agent_graph(names or list(CORE_NODES), policy)
    return decide(graph, policy.name, metrics or make_metrics([0.8, 0.85]), max_repairs)


def test_valid_first_answer_goes_straight_through():
    decision = run(ScriptedPolicy([GOOD]))
    assert decision.valid and not decision.fallback and decision.repair_attempts == 0
    assert decision.command.hyperparameters == {"dropout": 0.25, "learning_rate": 5e-4} and decision.raw_output == GOOD
    assert "Epoch 2 of 20" in decision.prompt


def test_invalid_answer_is_sent_back_with_the_exact_errors_then_repaired():
    policy = ScriptedPolicy(["not json", GOOD])
    decision = run(policy)
    assert not decision.valid and not decision.fallback and decision.repair_attempts == 1
    assert policy.seen_feedback[0] == [] and "not valid JSON" in policy.seen_feedback[1][0]
    assert decision.command.hyperparameters["dropout"] == 0.25


def test_never_valid_ends_in_deterministic_repair_keeping_valid_parts():
    bad = json.dumps({"dropout": "lots", "learning_rate": 5e-4, "alpha": 0.5})
    policy = ScriptedPolicy([bad, bad, bad])
    decision = run(policy, max_repairs=2)
    assert decision.fallback and decision.repair_attempts == 2 and not decision.valid
    assert "after 3 answer(s)" in decision.fallback_reason and "dropout must be a number" in decision.fallback_reason
    # learning_rate and alpha were valid and are kept; dropout falls back to the current value.
    assert decision.command.hyperparameters == {"dropout": 0.2, "learning_rate": 5e-4} and decision.command.alpha == 0.5
    assert policy.answers == []


PREVIOUS = make_command(dropout=0.25, learning_rate=5e-4, alpha=0.3, rationale="fine")


def test_reflection_judges_the_previous_decision():
    metrics = make_metrics([0.80, 0.85, 0.80], lrs=[1e-3, 1e-3, 5e-4], lr=5e-4, previous_command=PREVIOUS)
    decision = run(ScriptedPolicy([GOOD]), metrics=metrics)
    r = decision.reflection
    assert (r.verdict, r.about_epoch, r.objective, r.objective_before, r.objective_after) == (
        "harmful", 2, "val_acc", 0.85, 0.80,
    )  # fmt: skip
    assert r.text == (
        "val_acc went from 0.8500 to 0.8000 (-0.0500, worse) after changing dropout 0.2 -> 0.25, "
        "learning_rate 1.00e-03 -> 5.00e-04, alpha 0.40 -> 0.30: the decision was harmful."
    )


@pytest.mark.parametrize(
    "val_rmses, verdict, words",
    [
        ([60.0, 58.0, 57.2], "beneficial", "58.00 to 57.20 (-0.80, better)"),
        ([60.0, 58.0, 58.3], "neutral", "58.00 to 58.30 (+0.30, within noise)"),
        ([60.0, 58.0, 57.7], "neutral", "58.00 to 57.70 (-0.30, within noise)"),
        ([60.0, 58.0, 59.0], "harmful", "58.00 to 59.00 (+1.00, worse)"),
        ([60.0, 58.0, float("nan")], "harmful", "58.00 to nan (+nan, worse)"),
    ],
)
def test_in_min_mode_a_lower_objective_is_better(val_rmses, verdict, words):
    previous = make_command(learning_rate=5e-4, dropout=0.0, weight_decay=0.0)
    metrics = make_regression_metrics(val_rmses, lr=5e-4, lrs=[1e-3, 1e-3, 5e-4], previous_command=previous)
    decision = run(HeuristicPolicy(), metrics=metrics)
    r = decision.reflection
    assert (r.verdict, r.objective, r.objective_before) == (verdict, "val_rmse", 58.0)
    assert r.text == (
        f"val_rmse went from {words} after changing learning_rate 1.00e-03 -> 5.00e-04: the decision was {verdict}."
    )


def test_critic_added_by_name_softens_a_risky_change():
    risky = json.dumps({"dropout": 0.4, "learning_rate": 4e-4, "alpha": 0.4, "rationale": "big jump"})
    decision = run(ScriptedPolicy([risky]), names=pipeline_with(["critic"]))
    assert decision.command.hyperparameters == {"dropout": 0.25, "learning_rate": pytest.approx((4e-4 * 1e-3) ** 0.5)}
    assert {n["action"] for n in decision.notes} == {"soften"}


def own_node(state):
    """A user's node, loaded by module:function reference."""
    return {"notes": [{"node": "own", "saw_epoch": state["metrics"].epoch}]}


def test_a_users_own_node_is_loaded_by_reference():
    decision = run(HeuristicPolicy(), names=pipeline_with(["tests.agents.test_graph:own_node"]))
    assert {"node": "own", "saw_epoch": 2} in decision.notes


def test_bad_pipelines_are_refused():
    with pytest.raises(UnknownNodeError, match="unknown node 'nosuch'"):
        resolve_node("nosuch")
    with pytest.raises(UnknownNodeError, match="cannot load node"):
        resolve_node("no.such.module:fn")
    with pytest.raises(ValueError, match="lacks core node"):
        build_agent_graph(["prompter", "controller", "validator", "repairer"], HeuristicPolicy())
    with pytest.raises(ValueError, match="repairer must directly follow validator"):
        build_agent_graph(["prompter", "controller", "validator", "critic", "repairer", "reflector"], HeuristicPolicy())


def test_a_node_is_found_through_the_entry_point_group(tmp_path, monkeypatch):
    dist = tmp_path / "my_nodes-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-nodes\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[reflectnet.nodes]\nmine = tests.agents.test_graph:own_node\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_node("mine") is own_node
    decision = run(HeuristicPolicy(), names=pipeline_with(["mine"]))
    assert {"node": "own", "saw_epoch": 2} in decision.notes


def boom(state):
    """A user's node that raises."""
    raise KeyError("budget")


def wrecks_the_command(state):
    """A user's node that sets a learning rate beyond the hard bounds (nothing in UpdateCommand knows them)."""
    knobs = {**state["command"].hyperparameters, "learning_rate": 5.0}
    return {"command": state["command"].model_copy(update={"hyperparameters": knobs})}


def wrecks_alpha(state):
    """A user's node that sets alpha beyond its bounds (model_copy skips validation)."""
    return {"command": state["command"].model_copy(update={"alpha": 5.0})}


def drops_a_knob(state):
    return {"command": state["command"].model_copy(update={"hyperparameters": {"dropout": 0.2}})}


def returns_a_list(state):
    return ["not", "an", "update"]


@pytest.mark.parametrize(
    "node, error",
    [
        ("tests.agents.test_graph:boom", "KeyError: 'budget'"),
        (
            "tests.agents.test_graph:wrecks_the_command",
            "set learning_rate to 5.0, outside its hard bounds [1e-06, 0.1]",
        ),
        ("tests.agents.test_graph:wrecks_alpha", "set an invalid command: 1 validation error for UpdateCommand"),
        (
            "tests.agents.test_graph:drops_a_knob",
            "set a command with knobs ['dropout'], the task has ['dropout', 'learning_rate']",
        ),
        ("tests.agents.test_graph:returns_a_list", "returned list, not a dict of state fields"),
    ],
)
def test_a_failing_node_after_validation_costs_a_note_and_an_event_not_the_command(node, error):
    from structlog.testing import capture_logs

    metrics = make_metrics([0.80, 0.85], previous_command=PREVIOUS)
    with capture_logs() as events:
        decision = run(ScriptedPolicy([GOOD]), names=pipeline_with(["critic", node]), metrics=metrics)
    assert decision.valid and not decision.fallback
    # the command as the critic left it (lr 5e-4 is beyond x1.5 of 1e-3: softened to the geometric mean)
    assert decision.command.hyperparameters == {"dropout": 0.25, "learning_rate": pytest.approx((5e-4 * 1e-3) ** 0.5)}
    (failed,) = [n for n in decision.notes if n.get("action") == "failed"]
    assert failed["node"] == node and failed["error"].startswith(error)
    (event,) = [e for e in events if e["event"] == "node_failed"]
    assert (event["node"], event["run_id"], event["epoch"]) == (node, "run-test", 2)
    assert decision.reflection.verdict == "beneficial"  # the reflector still ran after it
