"""Controllers: who answers the agent graph's controller node.

The contract (``contract``): a policy returns a :class:`Proposal`, or a model's answer text
(:class:`ControllerAnswer`) that is parsed into one; every proposal passes the same checks. The registry
(``registry``) resolves a name to a :class:`Controller`. Built-ins: the rule set and its policies (``rules``:
``heuristic``, ``plateau``), ``replay``, ``llm`` in the free form (``llm``) or the expert form (``expert``).
"""

from agents.controllers.contract import ControllerAnswer, Policy, PolicyAnswer, Proposal, WeightChange
from agents.controllers.registry import (
    BUILTINS,
    Controller,
    UnknownControllerError,
    controller_names,
    resolve_controller,
)

__all__ = [
    "BUILTINS", "Controller", "ControllerAnswer", "Policy", "PolicyAnswer", "Proposal", "UnknownControllerError",
    "WeightChange", "controller_names", "resolve_controller",
]  # fmt: skip
