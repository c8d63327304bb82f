"""The controller registry: built-ins, entry points and module:factory references, resolved and run
through the real graph."""

import json
import textwrap

import pytest
from pydantic import ValidationError

from agents.config import AgentConfig
from agents.controllers import (
    BUILTINS,
    UnknownControllerError,
    controller_names,
    resolve_controller,
)
from agents.graph import CORE_NODES, build_agent_graph
from agents.service import decide, make_policy_and_judge
from bus.messages import WeightOp
from bus.transport import free_tcp_endpoint
from tests.helpers import agent_config, make_command, make_metrics, make_regression_metrics

USER_MODULE = '''
import json

from agents.controllers import Controller
from agents.controllers import ControllerAnswer


class HalvingPolicy:
    name = "halving"

    def propose(self, state):
        m = state["metrics"]
        knobs = {name: value / 2 for name, value in m.hyperparameters.items()}
        return ControllerAnswer(json.dumps({**knobs, "alpha": 0.0, "rationale": f"halve all at {m.epoch}"}))


def make_controller(cfg):
    """Halves every knob, every epoch."""
    return HalvingPolicy(), None


CONTROLLER = Controller("ignored", "halves every knob through a model", True, make_controller)
NOT_A_CONTROLLER = 7


class TenfoldPolicy:
    """Proposes a typed command: ten times the learning rate (beyond the trust region), dropout 5 on request."""

    name = "tenfold"

    def __init__(self, dropout=None):
        self.dropout = dropout

    def propose(self, state):
        from agents.controllers import Proposal

        m = state["metrics"]
        knobs = {**m.hyperparameters, "learning_rate": m.hyperparameters["learning_rate"] * 10}
        if self.dropout is not None:
            knobs["dropout"] = self.dropout
        return Proposal(knobs, m.alpha, rationale="ten times the learning rate")


def make_tenfold(cfg):
    return TenfoldPolicy()


def make_invalid(cfg):
    return TenfoldPolicy(dropout=5.0)


def make_reader(cfg):
    """Reads the user's instruction (it says so)."""
    return TenfoldPolicy()


make_reader.reads_instructions = True
READER = Controller("ignored", "reads instructions", False, make_tenfold, reads_instructions=True)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "reflectnet_user_controllers.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "reflectnet_user_controllers"


def config(tmp_path, **fields) -> AgentConfig:
    return agent_config(endpoint=free_tcp_endpoint(), recorder_endpoint=free_tcp_endpoint(), run_dir=tmp_path, **fields)


def decide_with(cfg: AgentConfig, metrics):
    policy, judge = make_policy_and_judge(cfg)
    return decide(build_agent_graph(list(CORE_NODES), policy, judge), policy.name, metrics, cfg.max_repairs)


def test_the_builtins_are_listed_with_what_the_orchestrator_needs_to_know():
    assert controller_names()[:7] == ["heuristic", "plateau", "random", "llm", "replay", "none", "aa"]
    assert [name for name, c in BUILTINS.items() if c.uses_llm] == ["llm"]
    assert [name for name, c in BUILTINS.items() if not c.needs_agent] == ["none", "aa"]
    assert resolve_controller("plateau") is BUILTINS["plateau"]
    assert [name for name, c in BUILTINS.items() if c.reads_instructions] == ["llm"]


def test_a_plugin_reads_instructions_only_when_it_says_so(user_module):
    assert not resolve_controller(f"{user_module}:make_controller").reads_instructions  # not declared
    assert not resolve_controller(f"{user_module}:CONTROLLER").reads_instructions
    assert resolve_controller(f"{user_module}:make_reader").reads_instructions  # the factory's attribute
    assert resolve_controller(f"{user_module}:READER").reads_instructions  # the Controller's field


def test_unknown_names_are_refused_in_one_line(tmp_path, user_module):
    with pytest.raises(UnknownControllerError) as exc:
        resolve_controller("nosuch")
    assert str(exc.value) == (
        "unknown controller 'nosuch'; known: heuristic, plateau, random, llm, replay, none, aa; or use "
        "package.module:factory"
    )
    with pytest.raises(
        UnknownControllerError, match=r"^cannot load controller 'no\.such:thing': ModuleNotFoundError: "
    ):
        resolve_controller("no.such:thing")
    with pytest.raises(UnknownControllerError, match="is a int, not a Controller or a factory"):
        resolve_controller(f"{user_module}:NOT_A_CONTROLLER")
    valid = config(tmp_path).model_dump()
    with pytest.raises(ValidationError, match="unknown controller 'nosuch'"):
        AgentConfig.model_validate({**valid, "controller": "nosuch"})
    with pytest.raises(ValidationError, match="controller 'none' runs no agent process"):
        AgentConfig.model_validate({**valid, "controller": "none"})
    with pytest.raises(ValueError, match="controller 'llm' needs llm settings"):
        make_policy_and_judge(config(tmp_path, controller="llm"))


def test_a_factory_from_a_module_outside_the_project_decides_through_the_real_graph(tmp_path, user_module):
    name = f"{user_module}:make_controller"
    controller = resolve_controller(name)
    assert (controller.name, controller.description, controller.uses_llm) == (
        name,
        "Halves every knob, every epoch.",
        False,
    )
    cfg = config(tmp_path, controller=name)
    decision = decide_with(AgentConfig.model_validate_json(cfg.model_dump_json()), make_metrics([0.8, 0.85]))
    assert (decision.controller, decision.valid, decision.fallback) == ("halving", True, False)
    assert decision.command.hyperparameters == {"dropout": 0.1, "learning_rate": 5e-4} and decision.command.alpha == 0.0
    decision = decide_with(cfg, make_regression_metrics([60.0, 58.0], dropout=0.2, weight_decay=0.02))
    assert decision.command.hyperparameters == {"learning_rate": 5e-4, "dropout": 0.1, "weight_decay": 0.01}


def test_a_controller_is_found_through_the_entry_point_group(tmp_path, user_module):
    dist = tmp_path / "my_controllers-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-controllers\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[reflectnet.controllers]\nhalve = {user_module}:CONTROLLER\n")
    assert controller_names()[-1] == "halve"
    controller = resolve_controller("halve")
    assert (controller.name, controller.uses_llm, controller.needs_agent) == ("halve", True, True)
    decision = decide_with(config(tmp_path, controller="halve"), make_metrics([0.8, 0.85]))
    assert decision.controller == "halving" and decision.command.rationale == "halve all at 2"


def test_replay_answers_the_recorded_commands_through_the_validator(tmp_path):
    noise = WeightOp(layer="fc.3.weight", op="noise", value=0.01, seed=4242)
    raw = {"fc.3.bias": [0.01] * 10}
    recorded = make_command(dropout=0.3, learning_rate=5e-4, alpha=0.6, rationale="recorded", weight_ops=[noise])
    recorded = recorded.model_copy(update={"weight_modulation": raw})
    cfg = config(tmp_path, controller="replay", replay_commands={"run-test": {2: recorded}})
    cfg = AgentConfig.model_validate_json(cfg.model_dump_json())  # as the agent process reads it
    decision = decide_with(cfg, make_metrics([0.8, 0.85]))
    assert (decision.controller, decision.valid, decision.clamped) == ("replay", True, {})
    assert decision.command == recorded  # knobs, alpha, raw delta, operation and its seed: all as recorded
    held = decide_with(cfg, make_metrics([0.8, 0.85, 0.86], lr=5e-4, dropout=0.3)).command
    assert (held.hyperparameters, held.alpha, held.weight_ops) == ({"dropout": 0.3, "learning_rate": 5e-4}, 0.0, None)
    assert held.rationale == "replay: no command was recorded for epoch 3 of run 'run-test': hold, alpha 0"
    with pytest.raises(ValidationError, match="controller 'replay' needs command_space 'free'"):
        config(tmp_path, controller="replay", command_space="grid")


def test_a_controller_from_outside_returns_a_proposal_and_is_clamped_like_the_builtins(tmp_path, user_module):
    decision = decide_with(config(tmp_path, controller=f"{user_module}:make_tenfold"), make_metrics([0.8, 0.85]))
    assert (decision.controller, decision.valid, decision.fallback) == ("tenfold", True, False)
    assert decision.command.hyperparameters == {"dropout": 0.2, "learning_rate": pytest.approx(3e-3)}  # x3 at most
    assert decision.clamped == {"learning_rate": {"from": pytest.approx(1e-2), "to": pytest.approx(3e-3)}}
    assert json.loads(decision.raw_output)["learning_rate"] == pytest.approx(1e-2)  # what it proposed, recorded
    # a value that is no setting at all is an error for the repairer, then the deterministic repair keeps the rest
    invalid = decide_with(config(tmp_path, controller=f"{user_module}:make_invalid"), make_metrics([0.8, 0.85]))
    assert (invalid.valid, invalid.fallback) == (False, True)
    assert "dropout=5 is not a valid setting" in invalid.fallback_reason
    assert invalid.command.hyperparameters == {"dropout": 0.2, "learning_rate": pytest.approx(3e-3)}
