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


def test_an_instruction_replaced_before_any_decision_is_a_row_saying_by_what_and_when(con):
    buffer = RecordBuffer(con)
    buffer.add(run_started("r1"))
    first = Instruction(instruction_id="r1-say-a", text="raise dropout", source="say", received_at=time.time())
    second = Instruction(instruction_id="r1-say-b", text="lower dropout", source="say", received_at=time.time() + 1)
    for record in (
        InstructionRecord(run_id="r1", instruction=second),
        InstructionRecord(run_id="r1", instruction=first, superseded_by=second),
        InstructionRecord(run_id="r1", instruction=first),  # a resend without it: what was recorded stays
        InstructionRecord(run_id="r1", instruction=second, first_epoch=3),
    ):
        buffer.add(record)
    buffer.flush()
    rows = con.execute(
        "SELECT instruction_id, first_epoch, superseded_by, epoch(superseded_at) FROM instructions ORDER BY 1"
    ).fetchall()
    assert [r[:3] for r in rows] == [("r1-say-a", None, "r1-say-b"), ("r1-say-b", 3, None)]
    assert abs(rows[0][3] - second.received_at) < 1e-3 and rows[1][3] is None
