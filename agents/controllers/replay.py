"""``replay``: the commands of a recorded run, answered again without a model call."""

from __future__ import annotations

from agents.proposals.proposal import Proposal
from agents.state import AgentState
from agents.trends import current_values
from bus.messages import UpdateCommand


class ReplayPolicy:
    """Answers each (run_id, epoch) with the command recorded for it, without a model call:
    ``commands[run_id][epoch]`` is the command decided after that epoch of the replaying run. An epoch
    with no recorded command holds the current values with alpha 0. The proposal goes through the
    checks like any other (the recorded operations keep their seeds)."""

    name = "replay"

    def __init__(self, commands: dict[str, dict[int, UpdateCommand]] | None):
        self.commands = commands or {}

    def propose(self, state: AgentState) -> Proposal:
        """The recorded command for this run and epoch (``Proposal.from_command``), else a hold."""
        m = state["metrics"]
        command = self.commands.get(m.run_id, {}).get(m.epoch)
        if command is not None:
            return Proposal.from_command(command)
        rationale = f"replay: no command was recorded for epoch {m.epoch} of run {m.run_id!r}: hold, alpha 0"
        return Proposal(current_values(m), 0.0, rationale=rationale)
