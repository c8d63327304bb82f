"""The agent's nodes. Each is a plain function ``AgentState -> partial update``; ``controller`` is
made by :func:`agents.nodes.controller.controller_node` around a policy."""

from agents.nodes.critic import critic
from agents.nodes.prompter import prompter
from agents.nodes.reflector import reflector
from agents.nodes.repairer import repairer
from agents.nodes.validator import validator

__all__ = ["critic", "prompter", "reflector", "repairer", "validator"]
