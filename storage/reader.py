"""One way to read the database for ``run.py sql`` and ``run.py report``, during a run or after it.

:func:`open_reader` gives a :class:`Reader`: a read-only DuckDB connection when the file is free, or
the live recorder that holds it while a run is going (``storage/live.py``), which answers SELECT
statements over the last committed batch. The report code runs the same queries through either.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import duckdb

from storage.database import DatabaseError, DatabaseLocked, first_line, open_database
from bus.discovery import Lookup, RecorderEndpoint, lookup
from storage.live import LiveRecorder, QueryRefused, QueryResult, RecorderUnavailable
from storage.schema import MIGRATIONS, migrate

# A recorder that is starting has the file locked a moment before it publishes its endpoint, and one
# that is stopping withdraws its endpoint a moment before it lets go of the file.
LOCK_WAIT_S = 3.0


class ReaderError(Exception):
    """The database cannot be read or the query is refused: one line for the user."""


class Reader(Protocol):
    """Runs one query and returns its rows: ``query(sql, params)``; ``live`` says who answers."""

    live: bool

    def query(self, sql: str, params: Sequence = ()) -> QueryResult: ...


class DirectReader:
    """A read-only DuckDB connection: any statement, the database refuses every write."""

    live = False

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con

    def close(self) -> None:
        """Close the connection."""
        self._con.close()

    def query(self, sql: str, params: Sequence = ()) -> QueryResult:
        """The rows of ``sql`` (no rows and no columns for a statement that returns none)."""
        try:
            cursor = self._con.execute(sql, list(params))
            if cursor.description is None:
                return QueryResult([], [], [])
            columns = [d[0] for d in cursor.description]
            types = [str(d[1]) for d in cursor.description]
            return QueryResult(columns, types, cursor.fetchall())
        except duckdb.Error as exc:
            raise ReaderError(f"SQL error: {first_line(exc)}") from None


class LiveReader:
    """The live recorder, behind the same interface. If the recorder stops while being read (the run
    ended), the rest of the queries go to the file itself once it is free; if it was restarted, to the
    new recorder."""

    def __init__(self, db: Path, recorder: LiveRecorder):
        self._db = db
        self._recorder = recorder
        self._direct: DirectReader | None = None
        self.pid = recorder.info.pid
        self.live = True

    def query(self, sql: str, params: Sequence = ()) -> QueryResult:
        """The rows of one SELECT statement, as of the recorder's last commit."""
        if self._direct is None:
            try:
                return self._recorder.query(sql, params)
            except RecorderUnavailable as exc:
                con, recorder = _connect(self._db, LOCK_WAIT_S)
                if con is None:
                    if recorder.info.pid == self.pid:  # still held by a live recorder that does not answer
                        recorder.close()
                        raise ReaderError(str(exc)) from None
                    self._recorder.close()  # the orchestrator restarted the recorder: ask the new one
                    self._recorder, self.pid = recorder, recorder.info.pid
                    return self.query(sql, params)
                self._direct, self.live = DirectReader(con), False
            except QueryRefused as exc:
                raise ReaderError(str(exc)) from None
        return self._direct.query(sql, params)

    def close(self) -> None:
        """Close the recorder client and, if it came to that, the read-only connection."""
        self._recorder.close()
        if self._direct is not None:
            self._direct.close()


def why_not_live(holder_pid: int | None, found: Lookup[RecorderEndpoint]) -> str:
    """Why the process holding the database cannot answer queries, and what to do, in a few words;
    ``found``: what :func:`bus.discovery.lookup` found beside the file."""
    holder = f"PID {holder_pid}" if holder_pid is not None else "its holder"
    published = found.path
    if found.live is not None:
        return f"{published} names recorder pid {found.info.pid}, not {holder}: query when {holder} lets go of the file"
    if found.info is not None:
        return (
            f"{published} names recorder pid {found.info.pid}, which is gone, so {holder} is not a ReflectNet recorder: "
            f"query when it lets go of the file"
        )
    return (
        f"no ReflectNet recorder answers for it (there is no {published}): a recorder of this version answers "
        f"queries during a run; for anything else, query when {holder} lets go of the file"
    )


@contextmanager
def open_reader(db: Path, lock_wait_s: float = LOCK_WAIT_S) -> Iterator[Reader]:
    """A :class:`Reader` for ``db``: read-only if the file is free, else its live recorder.

    Raises :class:`ReaderError` when there is no file, it is damaged, or it is held by a process that
    is not a live ReflectNet recorder (the message names the file and that process).
    """
    if not db.is_file():
        raise ReaderError(f"no database at {db}")
    con, recorder = _connect(db, lock_wait_s)
    if con is not None and _schema_behind(con):
        con.close()
        con = _migrate_and_reopen(db)
    reader = DirectReader(con) if con is not None else LiveReader(db, recorder)
    try:
        yield reader
    finally:
        reader.close()


def _schema_behind(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether ``con``'s file is a ReflectNet database written before the latest migration (the views the
    report reads need its columns). A file without ``schema_version`` is left alone: queries say what fails."""
    try:
        version = con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]
    except duckdb.Error:
        return False
    return version is not None and version < MIGRATIONS[-1][0]


def _migrate_and_reopen(db: Path) -> duckdb.DuckDBPyConnection:
    """Bring an older file to the latest schema (columns added and backfilled, no record changed), as any
    run would at its start, then open it read-only again."""
    try:
        con = open_database(db)
        try:
            migrate(con)
        finally:
            con.close()
        return open_database(db, read_only=True)
    except DatabaseError as exc:
        raise ReaderError(f"{exc} (it was written by an earlier ReflectNet and must be migrated once)") from None
    except duckdb.Error as exc:
        raise ReaderError(f"cannot migrate {db} to the latest schema: {first_line(exc)}") from None


def _connect(db: Path, lock_wait_s: float) -> tuple[duckdb.DuckDBPyConnection | None, LiveRecorder | None]:
    """A read-only connection, or else a client of the live recorder holding the file."""
    deadline = time.monotonic() + lock_wait_s
    stale = None  # a stale file is removed when first found: keep what it said for the message
    while True:
        try:
            return open_database(db, read_only=True), None
        except DatabaseLocked as locked:
            found = lookup(RecorderEndpoint, db)
            stale = stale if found.info is None else found
            if found.live is not None and locked.holder_pid in (None, found.live.pid):
                return None, LiveRecorder(found.live)
            if time.monotonic() >= deadline:
                raise ReaderError(f"{locked}; {why_not_live(locked.holder_pid, stale or found)}") from None
        except DatabaseError as exc:
            raise ReaderError(str(exc)) from None
        time.sleep(0.1)
