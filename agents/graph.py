"""The agent graph, built by one function from an ordered list of node names.

    prompter -> controller -> validator --ok--> [extra nodes] -> reflector -> END
                                 |  ^
                            bad  v  |  (at most max_repairs re-asks, then deterministic repair)
                               repairer

Core nodes keep their relative order and ``repairer`` directly follows ``validator``; any other
node (a critic, or your own) may go anywhere in the list. Node names resolve, in order, to: the
core nodes, built-in extras (``critic``), the ``reflectnet.nodes`` entry-point group, and
``package.module:function`` references.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Callable, Literal

from langgraph.graph import END, START, StateGraph

from agents.nodes import critic, prompter, reflector, repairer, validator
from agents.nodes.controller import make_controller
from agents.nodes.reflector import make_reflector
from agents.policies import Policy
from agents.state import AgentState

CORE_NODES = ("prompter", "controller", "validator", "repairer", "reflector")
BUILTIN_NODES: dict[str, Callable[[AgentState], dict]] = {"critic": critic}
ENTRY_POINT_GROUP = "reflectnet.nodes"

Node = Callable[[AgentState], dict]


class UnknownNodeError(ValueError):
    pass


def resolve_node(name: str) -> Node:
    """The function a non-core node name refers to; raises UnknownNodeError with what was tried."""
    if name in BUILTIN_NODES:
        return BUILTIN_NODES[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            node = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownNodeError(f"cannot load node {name!r}: {exc}") from None
        if not callable(node):
            raise UnknownNodeError(f"node {name!r} is not callable")
        return node
    known = sorted({*BUILTIN_NODES, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
    raise UnknownNodeError(
        f"unknown node {name!r}; built-in extras: {', '.join(known)}; or use package.module:function"
    )


def graph_key(name: str) -> str:
    return name.replace(":", ".")


def pipeline_with(extra_nodes: list[str]) -> list[str]:
    """The default pipeline with ``extra_nodes`` inserted, in order, after validation (before reflector)."""
    names = list(CORE_NODES)
    at = names.index("reflector")
    return names[:at] + list(extra_nodes) + names[at:]


def check_pipeline(names: list[str]) -> None:
    missing = [n for n in CORE_NODES if n not in names]
    if missing:
        raise ValueError(f"pipeline lacks core node(s) {missing}: got {names=}")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"pipeline names {duplicated} more than once: got {names=}")
    positions = [names.index(n) for n in CORE_NODES]
    if positions != sorted(positions):
        raise ValueError(f"core nodes must keep the order {list(CORE_NODES)}: got {names=}")
    if names.index("repairer") != names.index("validator") + 1:
        raise ValueError(f"repairer must directly follow validator: got {names=}")


def build_agent_graph(names: list[str], policy: Policy, judge=None):
    """Compile the graph for the ordered node ``names`` with ``policy`` behind the controller and,
    if given, ``judge`` (an ``agents.llm.LLMJudge``) behind the reflector."""
    check_pipeline(names)
    nodes: dict[str, Node] = {
        "prompter": prompter,
        "controller": make_controller(policy),
        "validator": validator,
        "repairer": repairer,
        "reflector": make_reflector(judge) if judge is not None else reflector,
    }
    for name in names:
        if name not in nodes:
            nodes[name] = resolve_node(name)
    # LangGraph reserves ':' in node names; a module:function node is named module.function.
    nodes = {graph_key(name): fn for name, fn in nodes.items()}
    names = [graph_key(name) for name in names]

    graph = StateGraph(AgentState)
    for name in names:
        graph.add_node(name, nodes[name])

    def after(name: str) -> str:
        i = names.index(name) + 1
        return names[i] if i < len(names) else END

    after_repair = after("repairer")
    graph.add_edge(START, names[0])
    for name in names:
        if name == "validator":

            def route_validation(state: AgentState) -> Literal["repairer", "ok"]:
                return "repairer" if state.get("errors") else "ok"

            graph.add_conditional_edges("validator", route_validation, {"repairer": "repairer", "ok": after_repair})
        elif name == "repairer":

            def route_repair(state: AgentState) -> Literal["retry", "repaired"]:
                if not state.get("fallback"):
                    return "retry"
                if state.get("command") is None:
                    raise RuntimeError("repairer gave up without a repaired command")
                return "repaired"

            graph.add_conditional_edges("repairer", route_repair, {"retry": "controller", "repaired": after_repair})
        else:
            graph.add_edge(name, after(name))
    return graph.compile()
