"""The controllers an agent can run, in one registry.

A controller is what answers the agent graph's controller node: a policy (``agents.controllers.contract.Policy``)
and, optionally, a judge behind the reflector (``agents.controllers.llm.LLMJudge`` or anything with its ``judge``
method). Each entry says its name, a one-line description (for ``--help``), whether it calls a language
model (the orchestrator gives such controllers the model's timeout, the others a short one), whether it
needs an agent process at all (``none``, the baseline arm, does not), whether its policy reads the user's
instruction (``reads_instructions``: only then is an instruction followed; for any other controller it is only a
guard against moves that go against it, and the user is told so before training), and its factory
``(AgentConfig) -> (policy, judge or None)``.

Names resolve, in order, to: the built-ins (``heuristic``, ``plateau``, ``random``, ``llm``, ``replay``, and the
pseudo controllers ``none`` and ``aa``, which run no agent),
the ``reflectnet.controllers`` entry-point group, and ``package.module:factory`` references (``bus.plugins``, the
resolver shared with tasks and nodes). An entry point or reference names either a :class:`Controller` or a factory; a bare factory may say
``uses_llm = True`` and ``reads_instructions = True`` as attributes (both False when absent: a controller that
does not say it reads instructions is taken not to), and its docstring's first line is its description. This module
imports no model stack and no torch (the command line lists the names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bus.plugins import PluginError, PluginKind

if TYPE_CHECKING:
    from agents.config import AgentConfig
    from agents.controllers.contract import Policy

ENTRY_POINT_GROUP = "reflectnet.controllers"

Factory = Callable[["AgentConfig"], Any]


class UnknownControllerError(PluginError):
    """A controller name that resolves to no controller; the message is one line that says what was tried."""


@dataclass(frozen=True)
class Controller:
    """One entry of the registry (see the module docstring)."""

    name: str
    description: str
    uses_llm: bool = False
    factory: Factory | None = None
    needs_agent: bool = True  # False: no agent process runs for this controller (the baseline arm)
    reads_instructions: bool = False  # its policy reads the user's instruction (``EpochMetrics.instruction``)

    def build(self, cfg: AgentConfig) -> tuple[Policy, Any]:
        """The policy and judge (or None) for ``cfg``; a factory may also return the policy alone. Raises
        ValueError for a controller without an agent, :class:`UnknownControllerError` when the factory raises,
        TypeError when it returns no policy."""
        if self.factory is None or not self.needs_agent:
            raise ValueError(f"controller {self.name!r} runs no agent")
        made = CONTROLLERS.build(self.name, self.factory, cfg)
        policy, judge = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
        if not callable(getattr(policy, "propose", None)) or not isinstance(getattr(policy, "name", None), str):
            raise TypeError(f"controller {self.name!r}: the factory returned {type(policy).__name__}, not a policy")
        return policy, judge


def _heuristic(cfg: AgentConfig):
    from agents.controllers.rules import HeuristicPolicy

    return HeuristicPolicy(), None


def _plateau(cfg: AgentConfig):
    from agents.controllers.rules import PlateauPolicy

    return PlateauPolicy(), None


def _llm(cfg: AgentConfig):
    """The model's policy and, with ``llm_reflection``, its judge. They share one ``ChatCaller``: what
    the endpoint refuses is learnt once, for both. In the expert decision form (``agents.expert``) the
    model chooses among candidate actions and the rule judges."""
    from agents.chat import ChatCaller, make_chat_model, make_meter, response_formats
    from agents.controllers.llm import LLMJudge, LLMPolicy

    if cfg.llm is None:
        raise ValueError("controller 'llm' needs llm settings")
    settings = cfg.llm
    meter = make_meter(settings)  # one count of the calls, whichever of the callers below makes them
    caller = ChatCaller(
        make_chat_model(settings), response_formats(settings), settings.temperature, settings.max_tokens, meter
    )
    if settings.decision_form == "expert":  # the rule judges: its verdict cannot contradict the measurement
        from agents.controllers.expert import ExpertPolicy
        from agents.expert.choosers import ChatChooser, ScoredChooser

        if settings.provider == "local":
            chooser = ScoredChooser(settings.base_url, settings.model, settings.timeout_s, settings.temperature,
                                    meter)  # fmt: skip
        else:
            chooser = ChatChooser(caller)
        return ExpertPolicy(chooser, settings.model), None
    judge = LLMJudge(caller, settings.model) if cfg.llm_reflection else None
    return LLMPolicy(caller, settings.model), judge


def _random(cfg: AgentConfig):
    from agents.controllers.random import RandomPolicy

    return RandomPolicy(cfg.command_space), None


def _replay(cfg: AgentConfig):
    from agents.controllers.replay import ReplayPolicy

    return ReplayPolicy(cfg.replay_commands), None


BUILTINS: dict[str, Controller] = {
    c.name: c
    for c in (
        Controller(
            "heuristic", "rules: lower the learning rate on a plateau, regularise a widening gap", False, _heuristic
        ),
        Controller("plateau", "torch's ReduceLROnPlateau on the task's objective", False, _plateau),
        Controller("random", "seeded uniform draws over the model's bounded action space: the chance control", False,
                   _random),
        Controller("llm", "a language model decides and judges (embedded SmolLM2 or --llm-base-url)", True, _llm,
                   reads_instructions=True),
        Controller("replay", "the recorded commands of a run, without a model call", False, _replay),
        Controller("none", "no agent: the baseline arm only", False, None, needs_agent=False),
        Controller("aa", "no agent: the baseline again with another training-order seed (the A/A noise floor)",
                   False, None, needs_agent=False),
    )
}


CONTROLLERS = PluginKind("controller", ENTRY_POINT_GROUP, BUILTINS, error=UnknownControllerError)


def controller_names() -> list[str]:
    """Every name that resolves without a reference: the built-ins, then the entry points (sorted)."""
    return CONTROLLERS.names()


def _as_controller(name: str, obj: Any) -> Controller:
    if isinstance(obj, Controller):
        return dataclasses.replace(obj, name=name)
    if callable(obj):
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        description = doc[0] if doc else f"controller from {name}"
        return Controller(name, description, bool(getattr(obj, "uses_llm", False)), obj,
                          reads_instructions=bool(getattr(obj, "reads_instructions", False)))
    raise UnknownControllerError(f"controller {name!r} is a {type(obj).__name__}, not a Controller or a factory")


def resolve_controller(name: str) -> Controller:
    """The controller ``name`` refers to (see the module docstring); raises :class:`UnknownControllerError`."""
    found = CONTROLLERS.resolve(name)
    return found if name in BUILTINS else _as_controller(name, found)
