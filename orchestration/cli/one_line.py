"""argparse that fails in one line: :class:`CliError` for a bad value, :class:`OneLineParser` that raises it
instead of printing the usage and exiting; every run.py command reports it as ``run.py[ COMMAND]: error: ...``."""

from __future__ import annotations

import argparse


class CliError(Exception):
    """A bad flag value: printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors raise :class:`CliError` (one line, exit code 2 where caught)."""

    def error(self, message: str):  # argparse's default prints usage first; one clear line is enough
        raise CliError(message)
