"""ReflectNet: train a task while an agent steers it, everything recorded in DuckDB.

    python run.py --regime 1pct              # the paper's CNN on MNIST
    python run.py --task diabetes            # or cartpole, or package.module:factory
    python run.py report | sql | say ...     # the subcommands (orchestration/commands/)

runs a baseline arm (the task's optimizer alone) and a guided arm with the same seed and data. The
trainer, the agent and the recorder are separate OS processes talking over ZeroMQ on local sockets;
the ``orchestration`` package starts, watches and stops them and prints the results (ARCHITECTURE.md).
"""

from __future__ import annotations

import sys

from orchestration.commands import main as run_command


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` names (default: ``sys.argv[1:]``); its exit code."""
    return run_command(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
