"""ReflectNet: train a task while an agent steers it, everything recorded in DuckDB.

    python run.py --regime 1pct              # the paper's CNN on MNIST
    python run.py --task diabetes            # or cartpole, or package.module:factory

runs a baseline arm (the task's optimizer alone) and a guided arm with the same seed and data. The
trainer, the agent and the recorder are separate OS processes talking over ZeroMQ on local sockets;
the ``orchestration`` package starts, watches and stops them and prints the results (ARCHITECTURE.md).
"""

from __future__ import annotations

import sys

from orchestration.cli import CliError, build_parser, validate_args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("report", "sql"):
        from orchestration.analysis import analysis_main

        return analysis_main(argv)
    if argv and argv[0] == "say":
        from orchestration.steering import say_main

        return say_main(argv[1:])
    parser = build_parser()
    try:
        spec = validate_args(parser.parse_args(argv))
    except CliError as exc:
        print(f"run.py: error: {exc}", file=sys.stderr)
        return 2
    from orchestration.session import run_invocation  # torch, langchain, DuckDB: only once there is work

    return run_invocation(spec)


if __name__ == "__main__":
    sys.exit(main())
