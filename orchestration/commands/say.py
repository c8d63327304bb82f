"""``python run.py say "TEXT" [--run RUN_ID] [--db DB]`` / ``run.py say --clear``: hand the running invocation on
the database an instruction for its guided run (``orchestration.steering``), which applies it from the run's
next decision."""

from __future__ import annotations

import sys

from bus.messages import SayRequest
from orchestration.cli import CliError, instruction_text
from orchestration.commands.parsers import command_parser, db_flag
from orchestration.steering import send_say


def main(argv: list[str]) -> int:
    """``run.py say "TEXT" [--run RUN_ID] [--db DB]`` / ``run.py say --clear``: 0 when delivered, 2 otherwise,
    with one line either way."""
    parser = command_parser("say")
    parser.add_argument("text", nargs="?", help="the instruction, in plain language")
    parser.add_argument("--clear", action="store_true", help="withdraw the active instruction")
    parser.add_argument("--run", default=None, metavar="RUN_ID", help="the guided run (default: the one training now)")
    db_flag(parser, "the run's database")
    try:
        args = parser.parse_args(argv)
        if args.clear == (args.text is not None):
            raise CliError("give either an instruction or --clear")
        text = None if args.clear else instruction_text(args.text, "run.py say")
        reply = send_say(args.db, SayRequest(run_id=args.run, text=text))
    except CliError as exc:
        print(f"run.py say: error: {exc}", file=sys.stderr)
        return 2
    print(reply.detail if reply.ok else f"run.py say: error: {reply.detail}", file=sys.stdout if reply.ok else sys.stderr)
    return 0 if reply.ok else 2
