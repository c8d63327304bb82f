"""Instructions that cannot take effect are said so before training (issue 18, must-have 5): an empty schedule file
is a flag error, a schedule line at or after the last epoch and a controller that does not read instructions are
each one line (``orchestration.cli.instruction_notices``). Through the real processes: tests/e2e/test_instructions.py."""

from __future__ import annotations

import argparse

import pytest

from orchestration.cli import CliError, instruction_notices, instruction_schedule
from orchestration.commands import train
from trainer.config import ScheduledInstruction

HEURISTIC_NOTICE = "the heuristic controller does not read instructions: it will only be kept from moving against it"


def flags(instruction=None, instructions=None, controller=("llm",)) -> argparse.Namespace:
    return argparse.Namespace(instruction=instruction, instructions=instructions, controller=list(controller))


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n   # and another\n"])
def test_an_empty_schedule_file_is_a_one_line_error(tmp_path, content):
    schedule = tmp_path / "plan.txt"
    schedule.write_text(content)
    with pytest.raises(CliError) as exc:
        instruction_schedule(flags(instructions=schedule))
    assert str(exc.value) == f"--instructions {schedule}: no instruction in it; write lines 'EPOCH TEXT' or 'EPOCH clear'"


def test_an_empty_schedule_file_exits_2_with_one_line(tmp_path, capsys):
    schedule = tmp_path / "plan.txt"
    schedule.write_text("# nothing yet\n")
    code = train.main(["--task", "diabetes", "--instructions", str(schedule), "--db", str(tmp_path / "x.duckdb")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"run.py: error: --instructions {schedule}: no instruction in it; write lines "
                                 f"'EPOCH TEXT' or 'EPOCH clear'"]  # fmt: skip


def test_a_line_after_the_last_epoch_will_not_be_given_and_the_others_still_run():
    schedule = [ScheduledInstruction(from_epoch=1, text="lower the learning rate", source="schedule"),
                ScheduledInstruction(from_epoch=5, text="raise dropout", source="schedule"),
                ScheduledInstruction(from_epoch=9, text="halve the learning rate", source="schedule"),
                ScheduledInstruction(from_epoch=12, text=None, source="schedule")]  # fmt: skip
    assert instruction_notices(schedule, 5, ["llm"]) == [
        "instruction from epoch 5: 'raise dropout' cannot change training: only the decision after epoch 5, the "
        "last, reads it, and that decision is recorded but not applied",
        "instruction from epoch 9: 'halve the learning rate' will not be given: the run ends after epoch 5, and no "
        "decision follows epoch 9; the other instructions still apply",
        "'clear' at epoch 12 will not be given: the run ends after epoch 5, and no decision follows epoch 12; the "
        "other instructions still apply",
    ]
    assert instruction_notices(schedule[:1], 5, ["llm"]) == []  # in time, and a controller that reads it


def test_a_controller_that_does_not_read_instructions_is_said_so_once():
    given = [ScheduledInstruction(from_epoch=1, text="lower the learning rate", source="flag")]
    assert instruction_notices(given, 5, ["heuristic", "llm", "heuristic", "none"]) == [HEURISTIC_NOTICE]
    assert instruction_notices(given, 5, ["plateau"]) == [
        "the plateau controller does not read instructions: it will only be kept from moving against it"
    ]
    assert instruction_notices(given, 5, ["llm"]) == []
    cleared_only = [ScheduledInstruction(from_epoch=2, text=None, source="schedule")]
    assert instruction_notices(cleared_only, 5, ["heuristic"]) == []  # nothing to read


def test_a_plugin_controller_reads_instructions_only_when_it_declares_it(tmp_path, monkeypatch):
    (tmp_path / "notice_controllers.py").write_text(
        "def silent(cfg):\n    '''Ignores instructions.'''\n\n\n"
        "def reader(cfg):\n    '''Reads them.'''\n\n\nreader.reads_instructions = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    given = [ScheduledInstruction(from_epoch=1, text="lower the learning rate", source="flag")]
    assert instruction_notices(given, 5, ["notice_controllers:silent", "notice_controllers:reader"]) == [
        "the notice_controllers:silent controller does not read instructions: it will only be kept from moving against it"
    ]


def read_as(text: str):
    from bus.messages import InstructionReading

    return InstructionReading(read_as=f"read as: {text}", intent=text, confidence=0.9, reader="test")


def test_before_training_each_line_is_said_back_and_what_cannot_take_effect_is_said_in_its_place():
    from orchestration.session import instruction_readings, with_readings
    from orchestration.spec import RunSpec

    schedule = [
        ScheduledInstruction(from_epoch=1, text="lower the learning rate", source="schedule",
                             reading=read_as("learning_rate down")),
        ScheduledInstruction(from_epoch=2, text=None, source="schedule"),
        ScheduledInstruction(from_epoch=3, text="raise dropout", source="schedule", reading=read_as("dropout up")),
        ScheduledInstruction(from_epoch=7, text="halve the learning rate", source="schedule"),  # never read
    ]  # fmt: skip
    spec = RunSpec(task="diabetes", epochs=3, instructions=schedule)
    assert with_readings(spec) is spec  # the line after the last epoch is not read: it will not be given
    assert instruction_readings(spec, ["heuristic", "llm"]) == [
        "instruction from epoch 1: 'lower the learning rate' -> read as: learning_rate down",
        "instruction from epoch 2: cleared",
        "instruction from epoch 3: 'raise dropout' -> read as: dropout up",
        "instruction from epoch 3: 'raise dropout' cannot change training: only the decision after epoch 3, the "
        "last, reads it, and that decision is recorded but not applied",
        "instruction from epoch 7: 'halve the learning rate' will not be given: the run ends after epoch 3, and no "
        "decision follows epoch 7; the other instructions still apply",
        HEURISTIC_NOTICE,
    ]
    assert instruction_readings(spec, ["llm"])[-1].startswith("instruction from epoch 7")  # llm reads them


def test_the_notices_are_printed_by_the_invocation_not_by_the_flag_checks(tmp_path, monkeypatch, capsys):
    # once, with the readings (orchestration.session); a bad run never gets this far
    seen = []
    monkeypatch.setattr("orchestration.session.run_invocation", lambda spec: seen.append(spec) or 0)
    code = train.main(["--task", "diabetes", "--epochs", "2", "--controller", "heuristic", "--instruction",
                       "lower the learning rate", "--db", str(tmp_path / "x.duckdb")])  # fmt: skip
    assert code == 0 and len(seen) == 1 and capsys.readouterr().out == ""
