"""Opening the DuckDB file, with one-line errors that say which file is at fault and what to do.

Three ways an open fails, told apart because they call for different answers:

* the file is locked by another process (DuckDB allows one writer, and no reader beside it):
  :class:`DatabaseLocked`, which carries the holder's pid; it goes away when the holder exits;
* the write-ahead log next to the file cannot be replayed (torn by a crash in a way DuckDB does not
  tolerate, or hit by a replay bug of a DuckDB release): :class:`WalReplayError`; retrying cannot
  help, so the recorder exits with :data:`EXIT_DATABASE_UNUSABLE` and the orchestrator must not
  restart it;
* anything else (not a DuckDB file, written by a newer DuckDB, no permission): :class:`DatabaseUnusable`.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

# The recorder's exit code when the database cannot be opened or migrated for a reason that a restart
# does not fix (a damaged WAL, not a DuckDB file, a newer format). sysexits.h EX_DATAERR.
from bus.child import EXIT_DATABASE_UNUSABLE  # noqa: E402,F401  (re-exported: the recorder's exit code)

_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")


class DatabaseError(Exception):
    """The database file cannot be opened; ``str()`` is one line that names the file."""


class DatabaseLocked(DatabaseError):
    """Another process holds the file; ``holder_pid`` is its pid when DuckDB names it."""

    def __init__(self, message: str, holder_pid: int | None):
        super().__init__(message)
        self.holder_pid = holder_pid


class DatabaseUnusable(DatabaseError):
    """The file cannot be opened and waiting or restarting will not change that."""


class WalReplayError(DatabaseUnusable):
    """The write-ahead log ``<db>.wal`` cannot be replayed."""


def wal_path(db: Path) -> Path:
    """DuckDB's write-ahead log of ``db``."""
    return db.with_name(db.name + ".wal")


def first_line(exc: BaseException) -> str:
    """The first line of an error message (DuckDB appends context and stack traces on later lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def classify_open_error(db: Path, exc: duckdb.Error) -> DatabaseError:
    """The :class:`DatabaseError` that ``exc``, raised by ``duckdb.connect(db)``, stands for."""
    message = first_line(exc)
    held = _LOCK_HOLDER.search(message)
    if held:
        return DatabaseLocked(f"cannot open {db}: {message}", int(held["pid"]))
    wal = wal_path(db)
    if "replaying WAL" in message or (str(wal) in message and "WAL" in message):
        return WalReplayError(
            f"the write-ahead log {wal} cannot be replayed ({message.split(': ', 1)[-1]}); the database {db} "
            f"stays unusable until that file is moved aside (its records, committed after the last checkpoint, "
            f"are then lost) or opened with another DuckDB release"
        )
    if wal.is_file() and wal.stat().st_size > 0:
        return DatabaseUnusable(
            f"cannot open {db} (its write-ahead log {wal} holds {wal.stat().st_size} bytes not yet checkpointed "
            f"and may be the cause): {message}"
        )
    return DatabaseUnusable(f"cannot open {db}: {message}")


def open_database(db: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect(db)``; raises a :class:`DatabaseError` with one line naming the file."""
    try:
        return duckdb.connect(str(db), read_only=read_only)
    except duckdb.Error as exc:
        raise classify_open_error(db, exc) from None
