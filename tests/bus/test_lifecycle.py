"""The one parent watchdog (bus.lifecycle.watch_parent): it calls back once when the parent is gone, never before."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus.lifecycle import watch_parent

# A process whose child watches it: the parent starts the child, waits for "watching", then exits; the child's
# callback writes the file once (a second call would append) and the child waits long enough for a second one.
ORPHAN = """
import os, sys, time
marker = sys.argv[1]
if os.fork() == 0:
    from bus.lifecycle import watch_parent
    calls = []
    watch_parent(lambda: (calls.append(1), open(marker, "a").write(f"orphaned {len(calls)}\\n")), interval_s=0.05)
    open(marker + ".watching", "w").write("watching")
    time.sleep(1.5)
    os._exit(0)
while not os.path.exists(marker + ".watching"):
    time.sleep(0.01)
time.sleep(0.3)  # the watchdog has checked several times with the parent alive: nothing may be written yet
print(os.path.exists(marker), flush=True)
"""


def test_the_watchdog_calls_back_once_when_the_parent_is_gone(tmp_path):
    marker = tmp_path / "orphaned.txt"
    repo = Path(__file__).resolve().parents[2]
    parent = subprocess.run([sys.executable, "-c", ORPHAN, str(marker)], cwd=repo, capture_output=True, text=True,
                            timeout=30, env={**os.environ, "PYTHONPATH": str(repo)})  # fmt: skip
    assert parent.returncode == 0 and parent.stdout.strip() == "False", parent.stderr  # not while the parent lived
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # the child lives on a while: a second callback would show
    assert marker.read_text() == "orphaned 1\n"


def test_the_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval_s must be above 0 s, got interval_s=0"):
        watch_parent(lambda: None, interval_s=0)
