"""The user's instructions in the database: one row per instruction, its first shaped epoch set once, each
decision naming the instruction it was given."""

from __future__ import annotations

import time

from bus.messages import Decision, DecisionRecord, Instruction, InstructionRecord, UpdateCommand
from storage.recorder import RecordBuffer
from tests.storage.test_recorder import run_started


def test_an_instruction_is_stored_once_and_its_first_shaped_epoch_is_kept(con):
    buffer = RecordBuffer(con)
    buffer.add(run_started("r1"))
    given = Instruction(instruction_id="r1-0", text="halve the learning rate", source="flag", received_at=time.time())
    later = Instruction(instruction_id="r1-1", text="change nothing", source="schedule", received_at=time.time())
    command = UpdateCommand(hyperparameters={"learning_rate": 5e-4, "dropout": 0.2}, alpha=0.4)
    for record in (
        InstructionRecord(run_id="r1", instruction=given),
        InstructionRecord(run_id="r1", instruction=given, first_epoch=1),
        DecisionRecord(decision=Decision(run_id="r1", epoch=1, controller="x", command=command), applied=True,
                       instruction_id="r1-0"),  # fmt: skip
        InstructionRecord(run_id="r1", instruction=given, first_epoch=2),  # a resend after a restart, say
        InstructionRecord(run_id="r1", instruction=later),
    ):
        buffer.add(record)
    buffer.flush()
    rows = con.execute("SELECT instruction_id, text, source, first_epoch FROM instructions ORDER BY 1").fetchall()
    assert rows == [("r1-0", "halve the learning rate", "flag", 1), ("r1-1", "change nothing", "schedule", None)]
    assert con.execute("SELECT epoch, instruction_id FROM decisions").fetchall() == [(1, "r1-0")]
