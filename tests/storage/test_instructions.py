"""The user's instructions in the database: one row per instruction, its first shaped epoch set once, each
decision naming the instruction it was given."""

from __future__ import annotations

import time

import json

from agents.expert.reading import read
from agents.expert.record import reading_record
from bus.messages import Decision, DecisionRecord, Instruction, InstructionRecord, UpdateCommand
from tasks.mnist import SPEC
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


def test_an_instruction_keeps_its_reading_and_an_overridden_decision_its_proposal(con):
    buffer = RecordBuffer(con)
    buffer.add(run_started("r1"))
    reading = reading_record(read("halve the learning rate", SPEC), SPEC)
    given = Instruction(instruction_id="r1-0", text="halve the learning rate", source="flag", received_at=time.time(),
                        reading=reading)  # fmt: skip
    unread = Instruction(instruction_id="r1-1", text="no reading sent", source="say", received_at=time.time())
    command = UpdateCommand(hyperparameters={"learning_rate": 1e-3, "dropout": 0.2}, alpha=0.4)
    proposal = {"hyperparameters": {"learning_rate": 2e-3, "dropout": 0.2}, "alpha": 0.4}
    decision = Decision(run_id="r1", epoch=1, controller="x", command=command, instruction_outcome="overridden",
                        overridden_proposal=proposal)  # fmt: skip
    for record in (InstructionRecord(run_id="r1", instruction=given), InstructionRecord(run_id="r1", instruction=unread),
                   DecisionRecord(decision=decision, applied=True, instruction_id="r1-0")):  # fmt: skip
        buffer.add(record)
    buffer.flush()
    rows = con.execute("SELECT read_as, intent, moves, confidence, reader FROM instructions ORDER BY instruction_id")
    (read_as, intent, moves, confidence, reader), absent = rows.fetchall()
    assert read_as.startswith("read as: learning_rate × 0.5") and intent == "explicit: learning_rate down"
    assert json.loads(moves) == [{"knob": "learning_rate", "direction": -1, "factor": 0.5}]
    assert (confidence, reader) == (reading.confidence, reading.reader) and absent == (None,) * 5
    outcome, kept = con.execute("SELECT instruction_outcome, overridden_proposal FROM decisions").fetchall()[0]
    assert outcome == "overridden" and json.loads(kept) == proposal
