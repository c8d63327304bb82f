"""run.py's supervision of its children, with real child processes that keep dying."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from orchestration.supervisor import MAX_RESTARTS, ChildLost, Orchestrator


class Log:
    def __init__(self):
        self.events = []

    def _record(self, level):
        return lambda event, **data: self.events.append((level, event, data))

    def __getattr__(self, level):
        return self._record(level)


def always_dying() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])


def supervise_until(orch: Orchestrator, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while name in orch.children and time.monotonic() < deadline:
        orch.children[name].wait(10)
        orch.supervise()


def test_a_child_that_keeps_dying_is_restarted_then_abandoned(tmp_path):
    orch = Orchestrator(run_dir=tmp_path, log=Log())
    orch.recipes["agent-x"] = always_dying
    orch.children["agent-x"] = always_dying()
    supervise_until(orch, "agent-x")
    assert orch.restarts["agent-x"] == MAX_RESTARTS and "agent-x" not in orch.children
    events = [(level, event) for level, event, _ in orch.log.events]
    assert events.count(("warning", "child_restarted")) == MAX_RESTARTS
    assert events[-1] == ("error", "child_abandoned")
    orch.ctx.term()


def test_a_recorder_that_keeps_dying_stops_the_run_with_a_reason(tmp_path):
    orch = Orchestrator(run_dir=tmp_path, log=Log())
    orch.recipes["recorder"] = always_dying
    orch.children["recorder"] = always_dying()
    with pytest.raises(ChildLost, match="the recorder exited with code 3 6 times"):
        supervise_until(orch, "recorder")
    orch.ctx.term()
