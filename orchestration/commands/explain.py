"""``python run.py explain "TEXT" [--task NAME] [--task-option KEY=VALUE ...]``: how an instruction would be read
for a task, without a run — the same reading (``agents.expert.reading``) and the same sentence that ``--instruction``
and ``run.py say`` give back."""

from __future__ import annotations

import argparse
import sys

from orchestration.cli import CliError, instruction_text
from orchestration.commands.parsers import command_parser
from orchestration.spec import default

def explanation(text: str, task: str, options: dict) -> str:
    """Two lines: the said-back reading of ``text`` for ``task`` (``read as: ...`` / ``not understood: ...``),
    then which reader made it and with what confidence. UnknownTaskError (one line) for a task that cannot be
    built."""
    from agents.expert.reading import read
    from tasks.registry import task_class

    spec = task_class(task, options).spec()
    reading = read(text, spec)
    kind = reading.intent.kind if reading.understood else "not acted on"
    return f"{reading.said_back(spec)}\n(task {spec.name}; reader {reading.reader}, confidence {reading.confidence:g}: {kind})"


def main(argv: list[str]) -> int:
    """Print the reading; 0 whether or not it was understood (both are answers), 2 for a bad flag or task."""
    from tasks.registry import UnknownTaskError

    parser = command_parser("explain")
    parser.add_argument("text", help='the instruction, in plain language, e.g. "halve the learning rate"')
    parser.add_argument("--task", default=default("task"), help=f"the task to read it for (default: {default('task')})")
    parser.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the task's factory, as for training (default: none)")  # fmt: skip
    try:
        args = parser.parse_args(argv)
        options = task_options(args)
        print(explanation(instruction_text(args.text, "run.py explain"), args.task, options))
    except (CliError, UnknownTaskError) as exc:
        print(f"run.py explain: error: {exc}", file=sys.stderr)
        return 2
    return 0


def task_options(args: argparse.Namespace) -> dict:
    """``--task-option`` as keyword arguments (the training flags' reading of them)."""
    from orchestration.cli.checks import task_options as training_options

    return training_options(argparse.Namespace(task_option=args.task_option, data_dir=None, batch_size=None,
                                               no_compile=False))  # fmt: skip
