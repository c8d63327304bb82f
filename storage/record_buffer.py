"""The recorder's buffer: rows waiting for the next batched commit and the senders' delivery watermarks,
committed together in one transaction so a sender is acknowledged only for what is in the file."""

from __future__ import annotations

import json
import os
import time

import duckdb

from bus.messages import (
    DecisionRecord,
    EpochRecord,
    InstructionRecord,
    LogEvent,
    Message,
    ReflectionRecord,
    RunFinished,
    RunStarted,
)
from storage.record_rows import FLUSH_ORDER, INSERTS, row_for, utc_datetime


class RecordRejected(ValueError):
    """A well-formed record the database must not take (e.g. for a run it does not know)."""


RUN_RECORDS = (EpochRecord, DecisionRecord, ReflectionRecord, InstructionRecord, RunFinished, LogEvent)


def _run_of(message: Message) -> str | None:
    if isinstance(message, DecisionRecord):
        return message.decision.run_id
    return getattr(message, "run_id", None)


class RecordBuffer:
    """Rows waiting for the next batched commit, per table, and the senders' delivery watermarks."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con
        self._rows: dict[str, list[tuple]] = {table: [] for table in FLUSH_ORDER}
        self.pending = 0
        self.written = 0
        self.known_runs: set[str] = {run_id for (run_id,) in con.execute("SELECT run_id FROM runs").fetchall()}
        # sender -> highest seq committed (from the database) and accepted (committed or in this buffer)
        self.committed: dict[str, int] = dict(con.execute("SELECT sender, seq FROM delivery").fetchall())
        self.accepted: dict[str, int] = dict(self.committed)
        self._marks: dict[str, int] = {}

    def add(self, message: Message) -> None:
        """Queue ``message``'s row; raises :class:`RecordRejected` for a run this database does not know."""
        run_id = _run_of(message)
        if isinstance(message, RUN_RECORDS) and run_id is not None and run_id not in self.known_runs:
            raise RecordRejected(f"{message.TOPIC} for unknown run {run_id[:80]!r}")
        table, row = row_for(message)
        if isinstance(message, RunStarted):
            self.known_runs.add(message.run_id)
        self._rows[table].append(row)
        self.pending += 1

    @property
    def unsaved(self) -> bool:
        """Rows or watermarks not committed yet."""
        return bool(self.pending or self._marks)

    def accept(self, sender: str, seq: int) -> str:
        """Where message ``seq`` of ``sender`` stands: 'new' (take it), 'duplicate' or 'gap' (drop it)."""
        last = self.accepted.get(sender, 0)
        if seq <= last:
            return "duplicate"
        if seq > last + 1:
            return "gap"
        self.accepted[sender] = seq
        self._marks[sender] = seq
        return "new"

    def flush(self) -> dict[str, int]:
        """Commit every pending row and watermark in one transaction; returns the senders to acknowledge.

        If the batch fails, it is retried row by row so one bad row costs only itself; each
        rejected row becomes an event that says why.
        """
        marks, self._marks = self._marks, {}
        if not self.pending and not marks:
            return {}
        batch = {table: rows for table, rows in self._rows.items() if rows}
        self._rows = {table: [] for table in FLUSH_ORDER}
        flushed, self.pending = self.pending, 0
        now = utc_datetime(time.time())
        try:
            self._con.execute("BEGIN TRANSACTION")
            for table in FLUSH_ORDER:
                if table in batch:
                    self._con.executemany(INSERTS[table], batch[table])
            if marks:
                self._con.executemany(UPSERT_DELIVERY, [(sender, seq, now) for sender, seq in marks.items()])
            self._con.execute("COMMIT")
        except BaseException as exc:
            self._con.execute("ROLLBACK")
            if not isinstance(exc, duckdb.Error):  # interrupted (Stop): keep the rows for the final flush
                for table, rows in batch.items():
                    self._rows[table][:0] = rows
                self.pending += flushed
                self._marks = {**marks, **self._marks}
                raise
            try:
                for table in FLUSH_ORDER:
                    for row in batch.get(table, []):
                        try:
                            self._con.execute(INSERTS[table], row)
                        except duckdb.Error as exc:
                            flushed -= 1
                            reason = json.dumps({"table": table, "error": str(exc)[:500]})
                            self._con.execute(
                                INSERTS["events"],
                                (utc_datetime(time.time()), None, "recorder", os.getpid(), "error", "record_rejected", reason),
                            )
                if marks:
                    self._con.executemany(UPSERT_DELIVERY, [(sender, seq, now) for sender, seq in marks.items()])
            except BaseException:
                # Interrupted half-way: forget what these senders sent since their last commit, so it is
                # taken again when they resend (a later mark must not acknowledge rows that were dropped).
                for sender in marks:
                    self.accepted[sender] = self.committed.get(sender, 0)
                self._marks = {s: m for s, m in self._marks.items() if s not in marks}
                raise
        self.written += flushed
        self.committed.update(marks)
        return marks


UPSERT_DELIVERY = (
    "INSERT INTO delivery VALUES (?, ?, ?) ON CONFLICT (sender) DO UPDATE SET seq = excluded.seq, "
    "updated_at = excluded.updated_at"
)
