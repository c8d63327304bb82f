"""run.py's commands (orchestration/commands/): one table, listed by --help, each a module with main(argv); the
one-line errors of sql and say."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.discovery import InvocationEndpoint, discovery_file, publish
from orchestration.commands import COMMANDS, TRAIN
from orchestration.planning import Arm
from orchestration.session import resume_hint
from orchestration.spec import RunSpec

REPO = Path(__file__).resolve().parents[1]


def run_py(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip


def test_every_command_is_a_module_with_a_main():
    assert list(COMMANDS) == ["report", "sql", "say", "study", "explain"]
    for command in [TRAIN, *COMMANDS.values()]:
        assert command.module == f"orchestration.commands.{command.name}"
        assert callable(importlib.import_module(command.module).main)


def test_help_lists_every_subcommand_and_the_training_flags():
    result = run_py("--help")
    assert result.returncode == 0 and "--regime" in result.stdout and "--controller" in result.stdout
    listing = result.stdout.split("subcommands (python run.py COMMAND --help for a command's flags):\n", 1)[1]
    for name, command in COMMANDS.items():
        assert f"  {name}" in listing and command.summary in listing
    sql_help = run_py("sql", "--help")
    assert sql_help.returncode == 0 and sql_help.stdout.startswith("usage: run.py sql")


@pytest.mark.parametrize("query, what", [("", "empty"), ("   ", "empty"), ("-- just a note", "only a comment"),
                                         ("/* nothing */ ;", "only a comment")])
def test_sql_without_a_statement_is_a_one_line_error(tmp_path, query, what):
    result = run_py("sql", query, "--db", str(tmp_path / "none.duckdb"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f'run.py sql: error: the query is {what}: give a SQL statement, e.g. "SELECT * FROM paper_table"\n'


def test_say_to_an_invocation_whose_process_has_exited_answers_at_once(tmp_path):
    db = tmp_path / "s.duckdb"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    publish(InvocationEndpoint(pid=dead.pid, db_path=str(db.resolve()), control_endpoint="ipc:///nonexistent/control",
                               guided_runs=["r"], started_at=time.time()))  # fmt: skip
    started = time.monotonic()
    result = run_py("say", "lower the learning rate", "--db", str(db))
    assert time.monotonic() - started < 4.5  # no wait for the 5 s reply timeout
    assert result.returncode == 2
    assert result.stderr == (f"run.py say: error: no run is going on {db} (s.duckdb.invocation.json names pid "
                             f"{dead.pid}, which has exited)\n")  # fmt: skip
    assert not discovery_file(InvocationEndpoint, db).exists()  # the stale file is gone


def test_the_resume_hint_proposes_what_works(tmp_path):
    spec = RunSpec(db=tmp_path / "x.duckdb")
    arm = Arm("guided", "heuristic", "100", 0, "p", "p-heuristic", "f", status="interrupted")
    assert resume_hint(spec, arm) == ("run p-heuristic stopped before its first epoch ended, so there is nothing to "
                                      "resume: run the same command again to start it over (runs already completed "
                                      "are skipped)")  # fmt: skip
    arm.checkpoint = tmp_path / "checkpoints" / "p-heuristic.safetensors"  # configured, but no epoch written
    assert resume_hint(spec, arm).startswith("run p-heuristic stopped before its first epoch ended")


def test_the_headline_names_the_task_by_its_declared_name():
    from orchestration.session import task_label

    assert task_label("diabetes", {}) == "diabetes"


def test_explain_reads_an_instruction_for_a_task_without_a_run():
    """``run.py explain``: the same reading --instruction and say give back, and one line for a bad task."""

    def explain(*args):
        return run_py("explain", *args)

    halve = explain("halve the learning rate")
    assert halve.returncode == 0 and halve.stdout.splitlines() == [
        "read as: learning_rate × 0.5 at the next decision, then kept",
        "(task mnist; reader grammar, confidence 1: explicit)",
    ]
    song = explain("sing me a song", "--task", "cartpole")
    assert song.returncode == 0 and song.stdout.startswith(
        "not understood: nothing will change because of it; e.g. 'lower the learning rate'\n")
    weights = explain("shrink the last layer's weights a little", "--task", "diabetes")
    assert weights.stdout.startswith("read as: scale down last layer at the next decision")
    bad = explain("x", "--task", "nosuch")
    assert bad.returncode == 2 and bad.stderr.startswith("run.py explain: error: unknown task 'nosuch'; known: ")
