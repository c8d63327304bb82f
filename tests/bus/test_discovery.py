"""The discovery files beside a database (bus/discovery.py): published atomically, found while the owner runs,
and a stale one (its pid gone) reported as such and removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bus.discovery import (
    InvocationEndpoint,
    RecorderEndpoint,
    discovery_file,
    lookup,
    pid_alive,
    publish,
    read_published,
    withdraw,
)


def invocation(db, pid: int) -> InvocationEndpoint:
    return InvocationEndpoint(pid=pid, db_path=str(db.resolve()), control_endpoint="ipc:///tmp/x/control",
                              guided_runs=["r-heuristic"], started_at=time.time())  # fmt: skip


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_running_owner_is_found_and_withdraws_only_its_own_file(tmp_path):
    db = tmp_path / "a.duckdb"
    path = publish(invocation(db, os.getpid()))
    assert path == tmp_path / "a.duckdb.invocation.json" == discovery_file(InvocationEndpoint, db)
    assert not list(tmp_path.glob("*.tmp"))  # written through a temporary file, renamed
    found = lookup(InvocationEndpoint, db)
    assert found.alive and found.live == invocation(db, os.getpid()).model_copy(update={"started_at": found.info.started_at})
    assert lookup(RecorderEndpoint, db).info is None  # the other kind has its own file
    withdraw(InvocationEndpoint, db, os.getpid() + 1)  # not its file: stays
    assert path.exists()
    withdraw(InvocationEndpoint, db, os.getpid())
    assert not path.exists() and lookup(InvocationEndpoint, db).why_not() == "no a.duckdb.invocation.json"


def test_a_stale_file_is_reported_with_its_dead_pid_and_removed(tmp_path):
    db = tmp_path / "s.duckdb"
    pid = dead_pid()
    assert not pid_alive(pid) and pid_alive(os.getpid())
    path = publish(invocation(db, pid))
    found = lookup(InvocationEndpoint, db)
    assert found.live is None and found.info.pid == pid
    assert found.why_not() == f"s.duckdb.invocation.json names pid {pid}, which has exited"
    assert not path.exists()  # removed: the next reader finds none
    assert lookup(InvocationEndpoint, db).info is None


def test_a_file_published_for_another_database_or_unreadable_counts_as_none(tmp_path):
    db = tmp_path / "d.duckdb"
    moved = invocation(tmp_path / "elsewhere.duckdb", os.getpid())
    discovery_file(InvocationEndpoint, db).write_text(moved.model_dump_json())
    assert lookup(InvocationEndpoint, db).info is None and discovery_file(InvocationEndpoint, db).exists()
    discovery_file(InvocationEndpoint, db).write_text("{half a fi")
    assert read_published(InvocationEndpoint, db) is None and lookup(InvocationEndpoint, db).live is None
