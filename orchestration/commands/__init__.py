"""run.py's commands, one module each, registered in :data:`COMMANDS`.

``python run.py [FLAGS]`` trains (``train``, the default: no command word); ``python run.py NAME ...`` runs
the subcommand ``NAME``. A command is a module with ``main(argv: list[str]) -> int`` (argv without the
command word; the exit code) and one line in :data:`COMMANDS`; its module is imported only when it runs,
so ``run.py --help`` stays fast. Add one: write ``orchestration/commands/<name>.py`` and add its line.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A subcommand: the word after ``run.py``, one line of help, and the module whose ``main`` runs it."""

    name: str
    summary: str
    module: str

    def run(self, argv: list[str]) -> int:
        """Import the command's module and run its ``main(argv)``; its exit code."""
        return importlib.import_module(self.module).main(argv)


TRAIN = Command("train", "train with and without an agent steering (the default: no command word)",
                "orchestration.commands.train")  # fmt: skip

COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command("report", "write the results table and figures per task from the database",
                "orchestration.commands.report"),
        Command("sql", "answer a SQL query against the database, as a Markdown table", "orchestration.commands.sql"),
        Command("say", "give the running guided run an instruction (or --clear it)", "orchestration.commands.say"),
        Command("study", "run the study (controls, seeds, bad starts) into one database, resumable, and report it",
                "orchestration.commands.study"),
        Command("explain", "say how an instruction would be read for a task, without a run",
                "orchestration.commands.explain"),
    )
}  # fmt: skip


def command_listing() -> str:
    """The subcommands for ``run.py --help``: one line each, name and summary."""
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "subcommands (python run.py COMMAND --help for a command's flags):\n" + "\n".join(lines)


def main(argv: list[str]) -> int:
    """Dispatch ``run.py``'s arguments: a subcommand's word first runs it, anything else is training."""
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]].run(argv[1:])
    return TRAIN.run(argv)
