"""The user's instructions from the command line: ``--instruction TEXT|@FILE`` and the ``--instructions``
file of ``EPOCH TEXT`` / ``EPOCH clear`` lines, as one schedule (``run.py say`` checks its text here too)."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestration.cli.one_line import CliError
from orchestration.spec import guided_controllers
from trainer.config import ScheduledInstruction

MAX_INSTRUCTION_CHARS = 2000


def _read_text(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{flag}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def instruction_text(text: str, where: str) -> str:
    """An instruction with its whitespace collapsed; CliError when it is empty or too long."""
    text = " ".join(text.split())
    if not text:
        raise CliError(f"{where}: the instruction is empty")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise CliError(f"{where}: the instruction has {len(text)} characters, at most {MAX_INSTRUCTION_CHARS}")
    return text


def parse_schedule(text: str, where: str) -> list[ScheduledInstruction]:
    """``--instructions`` lines ``EPOCH TEXT`` / ``EPOCH clear`` (``#`` comments, blank lines skipped) as a
    schedule in epoch order; CliError naming the line for anything else."""
    schedule: list[ScheduledInstruction] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        epoch, _, rest = line.partition(" ")
        if not epoch.isdigit() or int(epoch) < 1 or not rest.strip():
            raise CliError(f"{where}:{number}: expected 'EPOCH TEXT' or 'EPOCH clear' with EPOCH >= 1, got {line[:60]!r}")
        if schedule and int(epoch) <= schedule[-1].from_epoch:
            raise CliError(f"{where}:{number}: epoch {epoch} is not after the previous line's {schedule[-1].from_epoch}")
        cleared = rest.strip().lower() == "clear"
        body = None if cleared else instruction_text(rest, f"{where}:{number}")
        schedule.append(ScheduledInstruction(from_epoch=int(epoch), text=body, source="schedule"))
    return schedule


def instruction_schedule(args: argparse.Namespace) -> list[ScheduledInstruction]:
    """--instruction (from the first decision) and --instructions (scripted) as one schedule."""
    schedule = []
    if args.instruction is not None:
        given = args.instruction
        source = "file" if given.startswith("@") else "flag"
        text = _read_text(Path(given[1:]), "--instruction") if source == "file" else given
        schedule.append(ScheduledInstruction(from_epoch=1, text=instruction_text(text, "--instruction"), source=source))
    if args.instructions is not None:
        scripted = parse_schedule(_read_text(args.instructions, "--instructions"), str(args.instructions))
        if not scripted:
            raise CliError(f"--instructions {args.instructions}: no instruction in it; write lines 'EPOCH TEXT' or "
                           f"'EPOCH clear'")  # fmt: skip
        if schedule and scripted and scripted[0].from_epoch == 1:
            raise CliError("--instruction and an --instructions line for epoch 1 both set the first instruction")
        schedule += scripted
    if schedule and not guided_controllers(args.controller):
        raise CliError("--instruction/--instructions need a guided arm; --controller none or aa runs no agent")
    return schedule


def schedule_notice(entry: ScheduledInstruction, epochs: int) -> str | None:
    """Why the schedule line ``entry`` cannot take effect in a run of ``epochs`` epochs, in one line, or None when
    it can: a line after the last epoch is never given (no decision follows it); a line for the last epoch is read
    only by the decision after it, which is recorded but never applied."""
    what = f"instruction from epoch {entry.from_epoch}: {entry.text!r}" if entry.text else (
        f"'clear' at epoch {entry.from_epoch}")  # fmt: skip
    if entry.from_epoch > epochs:
        return (f"{what} will not be given: the run ends after epoch {epochs}, and no decision follows epoch "
                f"{entry.from_epoch}; the other instructions still apply")  # fmt: skip
    if entry.from_epoch == epochs:
        return (f"{what} cannot change training: only the decision after epoch {epochs}, the last, reads it, and that "
                f"decision is recorded but not applied")  # fmt: skip
    return None


def unread_notice(controller: str) -> str:
    """What the user is told of an instruction given to ``controller``, which does not read instructions
    (``agents.controllers.Controller.reads_instructions``): the guard still keeps it from moving against one."""
    return f"the {controller} controller does not read instructions: it will only be kept from moving against it"


def controller_notices(schedule: list[ScheduledInstruction], controllers: list[str]) -> list[str]:
    """One :func:`unread_notice` per controller of ``controllers`` that does not read instructions, when
    ``schedule`` gives any (a schedule of ``clear`` lines only gives nothing to read)."""
    from agents.controllers import resolve_controller

    if not any(entry.text for entry in schedule):
        return []
    names = dict.fromkeys(guided_controllers(controllers))
    return [unread_notice(name) for name in names if not resolve_controller(name).reads_instructions]


def instruction_notices(schedule: list[ScheduledInstruction], epochs: int, controllers: list[str]) -> list[str]:
    """What of ``schedule`` cannot take effect in a run of ``epochs`` epochs steered by ``controllers``, one line
    each: :func:`schedule_notice` of each line in order, then :func:`controller_notices`."""
    lines = [notice for entry in schedule if (notice := schedule_notice(entry, epochs)) is not None]
    return lines + controller_notices(schedule, controllers)
