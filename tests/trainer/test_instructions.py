"""Which instruction is in force for each decision: the schedule from the command line, then what was said."""

from __future__ import annotations

import time

import pytest

from bus.messages import Instruction, InstructionUpdate
from orchestration.cli import CliError, parse_schedule
from trainer.config import ScheduledInstruction, TrainerConfig
from trainer.inbox import active_entry, decision_records, shaped_record, update_instruction
from trainer.process import Carry
from tests.helpers import trainer_config

SCHEDULE = [
    ScheduledInstruction(from_epoch=1, text="keep it", source="flag"),
    ScheduledInstruction(from_epoch=3, text=None, source="schedule"),
    ScheduledInstruction(from_epoch=5, text="raise dropout", source="schedule"),
]


def config(schedule=SCHEDULE) -> TrainerConfig:
    return trainer_config(run_id="r", pair_id="p", arm="guided", controller="heuristic", regime="100", seed=0,
                          epochs=8, run_dir="/tmp/r", recorder_endpoint="ipc:///tmp/r/x", instructions=schedule)  # fmt: skip


def said(text: str | None) -> InstructionUpdate:
    given = Instruction(instruction_id=f"r-say-{text}", text=text, source="say", received_at=time.time()) if text else None
    return InstructionUpdate(run_id="r", instruction=given)


def test_the_schedule_entry_in_force_is_the_last_one_due():
    assert [active_entry(SCHEDULE, epoch) for epoch in range(1, 7)] == [0, 0, 1, 1, 2, 2]
    assert active_entry(SCHEDULE[2:], 4) is None


def test_each_instruction_is_recorded_when_it_becomes_active_and_once_more_when_it_first_shapes_a_decision():
    cfg, carry = config(), Carry(hyperparameters={}, alpha=0.4)
    texts, records = [], []
    for epoch in range(1, 7):
        new = update_instruction(cfg, carry, epoch, [said("halve it")] if epoch == 2 else [])
        records += [(epoch, r.instruction.text, r.first_epoch) for r in new + shaped_record(cfg, carry, epoch)]
        texts.append(carry.instruction.text if carry.instruction else None)
    # said at epoch 2 overrides the flag's; the schedule's 'clear' at 3 withdraws it; 5 brings a new one
    assert texts == ["keep it", "halve it", None, None, "raise dropout", "raise dropout"]
    assert records == [(1, "keep it", None), (1, "keep it", 1), (2, "halve it", None), (2, "halve it", 2),
                       (5, "raise dropout", None), (5, "raise dropout", 5)]  # fmt: skip


def test_a_fallback_does_not_use_up_the_instruction_it_never_read():
    from bus.messages import Decision, DecisionRecord, InstructionRecord, UpdateCommand

    cfg, carry = config([]), Carry(hyperparameters={}, alpha=0.4)
    update_instruction(cfg, carry, 1, [said("halve it")])
    command = UpdateCommand(hyperparameters={}, alpha=0.0, rationale="fallback")
    fallback = Decision(run_id="r", epoch=1, controller="llm", command=command, fallback=True)
    records = decision_records(cfg, carry, 1, fallback, applied=True)
    assert [type(r) for r in records] == [DecisionRecord] and records[0].instruction_id == "r-say-halve it"
    assert not carry.instruction_shaped  # the next decision still carries it out first
    answered = fallback.model_copy(update={"epoch": 2, "fallback": False})
    first = decision_records(cfg, carry, 2, answered, applied=True)[0]
    assert isinstance(first, InstructionRecord) and first.first_epoch == 2 and carry.instruction_shaped


def test_say_clear_withdraws_the_instruction_until_a_new_one():
    cfg, carry = config([]), Carry(hyperparameters={}, alpha=0.4)
    update_instruction(cfg, carry, 1, [said("be careful")])
    assert carry.instruction.text == "be careful"
    assert update_instruction(cfg, carry, 2, [said(None)]) == [] and carry.instruction is None
    assert update_instruction(cfg, carry, 3, [said("a"), said("b")])[0].instruction.text == "b"  # the latest wins


def test_every_instruction_said_is_a_row_and_one_replaced_before_a_decision_says_by_what():
    cfg, carry = config([]), Carry(hyperparameters={}, alpha=0.4)
    a, withdrawal, b, c = said("a"), said(None), said("b"), said("c")
    records = update_instruction(cfg, carry, 1, [a, withdrawal, b, c])
    rows = [(r.instruction.text, r.superseded_by.text if r.superseded_by else None) for r in records]
    assert rows == [("c", None), ("a", None), ("b", "c")] and carry.instruction.text == "c"


def test_an_instruction_file_is_read_in_epoch_order_with_clear_and_comments():
    text = "# scripted\n1 it is overfitting, fight it\n\n4 clear  # enough\n6   converge  faster \n"
    assert [(e.from_epoch, e.text) for e in parse_schedule(text, "f.txt")] == [
        (1, "it is overfitting, fight it"), (4, None), (6, "converge faster")]  # fmt: skip
    with pytest.raises(CliError, match="f.txt:2: epoch 1 is not after"):
        parse_schedule("1 a\n1 b\n", "f.txt")


def test_the_decision_records_the_trainers_wait_and_the_history_what_it_cost():
    from bus.messages import Decision, EpochSummary, UpdateCommand
    from trainer.agent_client import charged

    cfg, carry = config([]), Carry(hyperparameters={}, alpha=0.4)
    command = UpdateCommand(hyperparameters={}, alpha=0.0, rationale="x")
    decision = Decision(run_id="r", epoch=1, controller="llm", command=command, llm_calls=3, cost_usd=0.25)
    assert decision_records(cfg, carry, 1, decision, applied=True, wait_ms=1234.5)[0].wait_ms == 1234.5
    summary = EpochSummary(epoch=1, metrics={"val_acc": 0.5}, hyperparameters={}, alpha=0.4)
    assert (summary.llm_calls, summary.llm_cost_usd) == (0, 0.0)
    spent = charged(summary, decision)
    assert (spent.llm_calls, spent.llm_cost_usd, spent.metrics) == (3, 0.25, {"val_acc": 0.5})
    fallback = decision.model_copy(update={"llm_calls": None, "cost_usd": None})  # a trainer's: the agent's unknown
    unknown = charged(summary, fallback)
    assert (unknown.llm_calls, unknown.llm_cost_usd) == (0, 0.0)
