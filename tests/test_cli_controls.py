"""The command line of the controls: ``--start`` checked against the task's knobs and bounds, and the A/A arm's
pseudo controller ``aa`` (a task must be able to vary its training order). Pure checks, no process started."""

from __future__ import annotations

import pytest

from orchestration.cli import CliError, build_parser, resolve_task
from orchestration.cli.checks import check_aa_arm, start_values
from tasks.registry import task_class


def checked(*argv: str) -> dict[str, float]:
    """``--start`` of the command line ``argv`` after the task's checks, as ``validate_args`` turns it."""
    args = build_parser().parse_args(list(argv))
    resolve_task(args)
    declared = task_class(args.task, args.task_options)
    check_aa_arm(args, declared)
    return start_values(args, declared)


def test_start_values_of_any_task_are_read_from_comma_lists_and_repeated_flags():
    assert checked() == {}
    assert checked("--start", "learning_rate=1e-2,dropout=0") == {"learning_rate": 0.01, "dropout": 0.0}
    assert checked("--task", "diabetes", "--start", "weight_decay=0.05", "--start", " learning_rate = 3e-3 ") == {
        "weight_decay": 0.05, "learning_rate": 0.003}  # fmt: skip
    assert checked("--task", "examples.momentum_task:MomentumDigits", "--start", "momentum=0.9") == {"momentum": 0.9}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--start", "learning_rate"], "--start must be KNOB=VALUE[,KNOB=VALUE], got 'learning_rate'"),
        (["--start", "learning_rate=1e-2,"], "--start must be KNOB=VALUE[,KNOB=VALUE], got ''"),
        (["--start", "=0.1"], "--start must be KNOB=VALUE[,KNOB=VALUE], got '=0.1'"),
        (["--start", "lr=1e-2"], "--start: task 'mnist' has no knob 'lr'; its knobs: dropout, learning_rate"),
        (["--task", "cartpole", "--start", "dropout=0.1"],
         "--start: task 'cartpole' has no knob 'dropout'; its knobs: learning_rate, ent_coef, clip_range"),
        (["--start", "dropout=lots"], "--start dropout: 'lots' is not a number"),
        (["--start", "dropout=5"], "--start dropout=5 is outside its hard bounds [0, 0.9]"),
        (["--start", "learning_rate=nan"], "--start learning_rate=nan is outside its hard bounds [1e-06, 0.1]"),
        (["--start", "dropout=0.1", "--start", "dropout=0.2"], "--start gives dropout twice"),
        (["--start", "dropout=0.1", "--resume", "r"],
         "--start cannot be combined with --replay or --resume: they use the recorded run's settings"),
        (["--task", "examples.linefit:LineFit", "--controller", "none,aa"],
         "--controller aa: task 'linefit' cannot vary its training order (its setup() takes no keyword order_seed, "
         "see tasks/base.py), so an A/A arm would repeat the baseline exactly"),
    ],
)  # fmt: skip
def test_a_bad_start_or_an_aa_arm_the_task_cannot_run_is_one_line(argv, message):
    with pytest.raises(CliError) as exc:
        checked(*argv)
    assert str(exc.value) == message


def test_every_built_in_task_can_run_an_aa_arm():
    for task in ("mnist", "diabetes", "cartpole"):
        checked("--task", task, "--controller", "none,aa,random")
