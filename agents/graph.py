"""The agent graph, built by one function from an ordered list of node names.

    prompter -> controller -> validator --ok--> [extra nodes] -> reflector -> END
                                 |  ^
                            bad  v  |  (at most max_repairs re-asks, then deterministic repair)
                               repairer

Core nodes keep their relative order and ``repairer`` directly follows ``validator``; any other
node (a critic, or your own) may go anywhere in the list. Node names resolve, in order, to: the
core nodes, built-in extras (``critic``), the ``reflectnet.nodes`` entry-point group, and
``package.module:function`` references (``bus.plugins``, the resolver shared with tasks and controllers).

Every extra node and the reflector run guarded (:func:`guarded`): one that raises, or returns an
update that would break the decision, costs nothing validated — its failure is a note and a
``node_failed`` event, and the command stays as it was before that node.
"""

from __future__ import annotations

import json
import traceback
from typing import Any, Callable, Literal

import structlog
from langgraph.graph import END, START, StateGraph
from pydantic import ValidationError

from agents.nodes import critic, prompter, reflector, repairer, validator
from agents.nodes.controller import controller_node
from agents.nodes.reflector import make_reflector
from agents.controllers.contract import Policy
from agents.state import AgentState
from bus.messages import Reflection, TaskSpec, UpdateCommand
from bus.plugins import PluginError, PluginKind

CORE_NODES = ("prompter", "controller", "validator", "repairer", "reflector")
BUILTIN_NODES: dict[str, Callable[[AgentState], dict]] = {"critic": critic}
ENTRY_POINT_GROUP = "reflectnet.nodes"

Node = Callable[[AgentState], dict]


class UnknownNodeError(PluginError):
    """A node name that is neither a built-in extra, nor an entry point, nor a loadable ``module:function``."""


NODES = PluginKind("node", ENTRY_POINT_GROUP, BUILTIN_NODES, "package.module:function", UnknownNodeError)


def resolve_node(name: str) -> Node:
    """The function a non-core node name refers to; raises UnknownNodeError in one line with what was tried."""
    return NODES.callable(name)


def knob_problem(command: UpdateCommand, spec: TaskSpec) -> str | None:
    """What is wrong with ``command``'s knobs for the task ``spec`` (None if nothing): not exactly the
    task's knobs, or a value that is not finite or lies outside its knob's hard bounds."""
    names = spec.knob_names()
    if sorted(command.hyperparameters) != sorted(names):
        return f"set a command with knobs {sorted(command.hyperparameters)[:8]}, the task has {names}"
    for knob in spec.hyperparameters:
        value = command.hyperparameters[knob.name]
        try:
            knob.check(value)  # the same check the trainer applies at the bus boundary
        except ValueError:
            return f"set {knob.name} to {value}, outside its hard bounds [{knob.low:g}, {knob.high:g}]"
    return None


def update_problem(update: Any, spec: TaskSpec | None = None) -> str | None:
    """What is wrong with a node's ``update`` (None if nothing): not a dict of known state fields, a
    ``command`` that is not a valid ``UpdateCommand`` (``model_copy`` skips validation) or, given the
    task's ``spec``, whose knobs do not fit it (:func:`knob_problem`), a ``reflection`` that is not a
    ``Reflection``, or ``notes`` that are not a JSON list of objects."""
    if update is None:
        return None
    if not isinstance(update, dict):
        return f"returned {type(update).__name__}, not a dict of state fields"
    unknown = sorted(str(k) for k in set(update) - set(AgentState.__annotations__))
    if unknown:
        return f"returned unknown state fields {unknown[:5]}"
    if "command" in update:
        command = update["command"]
        if not isinstance(command, UpdateCommand):
            return f"set command to {type(command).__name__}, not an UpdateCommand"
        try:
            UpdateCommand.model_validate(command.model_dump())
        except ValidationError as exc:
            return f"set an invalid command: {exc}"
        problem = knob_problem(command, spec) if spec is not None else None
        if problem is not None:
            return problem
    if "reflection" in update and not isinstance(update["reflection"], (Reflection, type(None))):
        return f"set reflection to {type(update['reflection']).__name__}, not a Reflection"
    if "notes" in update:
        notes = update["notes"]
        if not isinstance(notes, list) or not all(isinstance(n, dict) for n in notes):
            return "notes must be a list of dicts"
        try:
            json.dumps(notes)
        except (TypeError, ValueError) as exc:
            return f"notes are not JSON: {exc}"
    return None


def guarded(name: str, node: Node) -> Node:
    """``node`` run so that its failure costs nothing validated: an exception, or an update with a
    problem (see :func:`update_problem`), becomes a note ``{"node", "action": "failed", "error"}`` and
    a ``node_failed`` event, and the state is left as it was before the node."""

    def run_guarded(state: AgentState) -> dict:
        trace = None
        try:
            update = node(state)
            problem = update_problem(update, state["metrics"].task)
        except Exception as exc:  # a user's node may raise anything; the validated command must survive it
            problem, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=5)
        if problem is None:
            return update or {}
        m = state["metrics"]
        structlog.get_logger().error(
            "node_failed", run_id=m.run_id, epoch=m.epoch, node=name, error=problem[:1000], traceback=trace
        )
        kept = "the command as it was before this node" if state.get("command") is not None else "the state as it was"
        return {"notes": [{"node": name, "action": "failed", "error": problem[:1000], "kept": kept}]}

    return run_guarded


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
    if given, ``judge`` (an ``agents.controllers.llm.LLMJudge``) behind the reflector."""
    check_pipeline(names)
    nodes: dict[str, Node] = {
        "prompter": prompter,
        "controller": controller_node(policy),
        "validator": validator,
        "repairer": repairer,
        "reflector": make_reflector(judge) if judge is not None else reflector,
    }
    for name in names:
        if name not in nodes:
            nodes[name] = guarded(name, resolve_node(name))
    nodes["reflector"] = guarded("reflector", nodes["reflector"])
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
