"""The command line of ``run.py``'s default command (training): flags (``flags``), the checks argparse cannot
do (``checks``), the instruction flags (``schedule``), and the one-line errors every command shares
(``one_line``). This package is their public face; the subcommands are in ``orchestration.commands``.

Imports nothing heavy at module level (no torch, langchain, DuckDB): ``python run.py --help`` answers in a
fraction of a second; what a check needs is imported inside it.
"""

from orchestration.cli.checks import (
    cost_notice,
    model_spec,
    node_pipeline,
    preflight_database,
    resolve_task,
    task_options,
    validate_args,
    validate_controllers,
)
from orchestration.cli.flags import add_llm_flags, build_parser
from orchestration.cli.one_line import CliError, OneLineParser
from orchestration.cli.schedule import (
    MAX_INSTRUCTION_CHARS,
    instruction_notices,
    instruction_schedule,
    instruction_text,
    parse_schedule,
)

__all__ = [
    "MAX_INSTRUCTION_CHARS", "CliError", "OneLineParser", "add_llm_flags", "build_parser", "cost_notice",
    "instruction_notices",
    "instruction_schedule", "instruction_text", "model_spec", "node_pipeline", "parse_schedule", "preflight_database",
    "resolve_task", "task_options", "validate_args", "validate_controllers",
]  # fmt: skip
