"""Queries while a run is going: the recorder answers read-only SELECTs over what it has committed.

DuckDB lets no second process open a file that a writer holds, not even read-only ("Conflicting lock
is held"). So while a run is going, ``run.py sql`` and ``run.py report`` ask the recorder that owns the
file. The recorder says where in ``<db>.recorder.json`` (its pid and query endpoint, ``bus.discovery``:
written once it serves, removed at a clean exit, stale when its pid is gone) and answers on a socket of
its own, from a worker thread, so a slow query never holds up records, acknowledgements or the orchestrator's control
requests (DuckDB releases the GIL while it executes).

What the recorder runs is exactly one SELECT statement (as DuckDB's own parser classifies it:
``SELECT``, ``FROM t``, ``WITH``, ``VALUES``, ``DESCRIBE``, ``SUMMARIZE``, ``SHOW`` are SELECTs; ``PRAGMA``,
``COPY``, ``CALL``, ``SET``, ``ATTACH`` and every write are not), on a cursor of its own, inside a
transaction that is rolled back, so it sees the last committed batch and can change nothing; with a
time limit and caps on rows and bytes. File access from SQL is switched off in the recorder
(``enable_external_access = false``), so a query cannot read other files with the recorder's rights.

The parts, one module per concern: ``storage.query_values`` (rows, refusals, values on the wire),
``storage.query_service`` (the recorder's side), ``storage.query_client`` (the client's side); where the
recorder is comes from ``bus.discovery``. This module is their public face.
"""

from __future__ import annotations

from bus.discovery import RecorderEndpoint, pid_alive
from storage.query_client import LiveRecorder
from storage.query_service import (
    MAX_QUEUED_QUERIES,
    MAX_REPLY_BYTES,
    QueryService,
    answer_query,
    check_select,
    query_endpoint_for,
)
from storage.query_values import (
    QUERY_TIMEOUT_S,
    QueryRefused,
    QueryResult,
    RecorderUnavailable,
    from_json_value,
    to_json_value,
)

__all__ = [
    "MAX_QUEUED_QUERIES", "MAX_REPLY_BYTES", "QUERY_TIMEOUT_S", "LiveRecorder", "QueryRefused", "QueryResult",
    "QueryService", "RecorderEndpoint", "RecorderUnavailable", "answer_query", "check_select", "from_json_value",
    "pid_alive", "query_endpoint_for", "to_json_value",
]  # fmt: skip
