"""The user's instructions as the trainer carries them: the schedule given before the run, what is said during it
(``run.py say``, through the trainer's instruction socket), which one is in force for each decision, and their records."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

import zmq

from bus.child import Child
from bus.curve import CURVE_ENV, HEARTBEATS, connect_curve, curve_from_environment
from bus.messages import (
    BusDecodeError,
    Decision,
    DecisionRecord,
    Instruction,
    InstructionRecord,
    InstructionUpdate,
    ReflectionRecord,
    decode,
)
from trainer.config import ScheduledInstruction, TrainerConfig

if TYPE_CHECKING:
    from trainer.process import Carry


def active_entry(schedule: list[ScheduledInstruction], epoch: int) -> int | None:
    """The index of the schedule entry in force for the decision after ``epoch``: the last one due by then."""
    due = [i for i, entry in enumerate(schedule) if entry.from_epoch <= epoch]
    return due[-1] if due else None


class InstructionInbox:
    """The trainer's socket for instructions given during the run (``run.py say``, sent by the orchestrator):
    a PULL socket bound at ``endpoint`` (ipc) for a local trainer; for a trainer on a Ray node ``endpoint`` is the
    driver's ``tcp://`` steering socket, which it connects to as a CURVE client (a DEALER named after ``run_id``,
    with the invocation's client keys from ``bus.curve.CURVE_ENV``). Without an endpoint it is always empty.
    Raises ValueError for a network endpoint without those keys (a plaintext socket off this host is refused)."""

    def __init__(self, child: Child, endpoint: str | None, run_id: str = ""):
        self.socket = None
        if endpoint is None:
            return
        network = endpoint.startswith("tcp://")
        if network:
            keys = curve_from_environment()
            if keys is None:
                raise ValueError(f"the instruction endpoint {endpoint} is on the network: it needs this invocation's "
                                 f"CURVE keys in {CURVE_ENV}")  # fmt: skip
            self.socket = child.ctx.socket(zmq.DEALER)
            self.socket.setsockopt(zmq.ROUTING_ID, run_id.encode())  # the driver sends this run's instructions by it
            for option, value in HEARTBEATS:
                self.socket.setsockopt(option, value)
            connect_curve(self.socket, keys)
        else:
            self.socket = child.ctx.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        child.on_close.append(self.socket.close)
        (self.socket.connect if network else self.socket.bind)(endpoint)

    def updates(self, run_id: str, log) -> list[InstructionUpdate]:
        """Every update waiting now for this run, oldest first; anything else is logged and dropped."""
        found = []
        while self.socket is not None and self.socket.poll(0, zmq.POLLIN):
            try:
                update = decode(self.socket.recv_multipart())
            except BusDecodeError as exc:
                log.warning("bad_frame", reason=exc.reason, socket="instructions")
                continue
            if isinstance(update, InstructionUpdate) and update.run_id == run_id:
                found.append(update)
            else:
                log.warning("bad_frame", reason=f"not an instruction for {run_id}: {update.TOPIC}", socket="instructions")
        return found


def update_instruction(cfg: TrainerConfig, carry: Carry, epoch: int, said: list[InstructionUpdate]) -> list:
    """Make the instruction in force for this epoch's decision the active one — the scheduled one due now, then
    what was said since the last decision (the latest wins) — and return the record of a new one."""
    index = active_entry(cfg.instructions, epoch)
    changed = index != carry.instruction_index
    if changed:
        carry.instruction_index = index
        entry = cfg.instructions[index] if index is not None else None
        carry.instruction = None
        if entry is not None and entry.text is not None:  # else nothing given yet, or withdrawn
            carry.instruction = Instruction(instruction_id=f"{cfg.run_id}-{index}", text=entry.text,
                                            source=entry.source, received_at=time.time(),
                                            reading=entry.reading)  # fmt: skip
    records = superseded_records(cfg.run_id, said)
    if said:
        changed, carry.instruction = True, said[-1].instruction
    if not changed:
        return records
    carry.instruction_shaped = False
    return ([InstructionRecord(run_id=cfg.run_id, instruction=carry.instruction)] if carry.instruction else []) + records


def superseded_records(run_id: str, said: list[InstructionUpdate]) -> list[InstructionRecord]:
    """The rows of instructions said since the last decision and replaced before one read them (all but the last
    update), each with what replaced it (None: a withdrawal, which has no row of its own)."""
    return [
        InstructionRecord(run_id=run_id, instruction=update.instruction, superseded_by=later.instruction)
        for update, later in zip(said, said[1:])
        if update.instruction is not None
    ]


def decision_records(
    cfg: TrainerConfig, carry: Carry, epoch: int, decision: Decision, applied: bool, rollback_to: int | None = None,
    wait_ms: float | None = None, instruction: Instruction | None | Literal["in force"] = "in force",
    applied_epoch: int | None = None,
) -> list:
    """The records of one decision asked for after ``epoch`` with ``instruction`` in force: the instruction's first
    shaped epoch (only for a decision that read it — a fallback did not, so the instruction is still to be carried
    out at the next one; nor did an asynchronous decision asked before the instruction came), the decision naming
    the instruction, the epoch after which it was applied when that is a later one, the epoch a rollback restored
    and the trainer's ``wait_ms`` for it, and the reflection it carried."""
    current = carry.instruction.instruction_id if carry.instruction else None
    instruction = carry.instruction if instruction == "in force" else instruction
    instruction_id = instruction.instruction_id if instruction else None
    read_current = instruction_id is not None and instruction_id == current
    records: list = shaped_record(cfg, carry, epoch) if read_current and not decision.fallback else []
    records.append(DecisionRecord(decision=decision, applied=applied, instruction_id=instruction_id,
                                  rollback_to=rollback_to, wait_ms=wait_ms, applied_epoch=applied_epoch))  # fmt: skip
    if decision.reflection is not None:
        records.append(ReflectionRecord(run_id=cfg.run_id, reflection=decision.reflection))
    return records


def shaped_record(cfg: TrainerConfig, carry: Carry, epoch: int) -> list[InstructionRecord]:
    """The instruction's record with ``first_epoch``, once: when the first decision is made with it."""
    if carry.instruction is None or carry.instruction_shaped:
        return []
    carry.instruction_shaped = True
    return [InstructionRecord(run_id=cfg.run_id, instruction=carry.instruction, first_epoch=epoch)]
