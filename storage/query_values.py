"""What a live query's answer is on either side: its rows (:class:`QueryResult`), the one-line refusals,
and DuckDB's Python values made JSON-safe for the bus and restored on arrival (``storage.live``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from typing import Any
from uuid import UUID

QUERY_TIMEOUT_S = 60.0  # the recorder interrupts a query after this long


class QueryRefused(ValueError):
    """A query the live recorder does not run; the message says why, in one line."""


class RecorderUnavailable(QueryRefused):
    """The recorder did not answer, or answered that it is stopping (the run ended meanwhile)."""


@dataclass(frozen=True)
class QueryResult:
    """Rows of one query, from either a read-only connection or the live recorder."""

    columns: list[str]
    types: list[str]
    rows: list[tuple]
    truncated: bool = False  # the live recorder returned only the first rows


def to_json_value(value: Any) -> Any:
    """``value`` as DuckDB's Python client returns it, made JSON-safe (see :func:`from_json_value`)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (datetime, date, time_of_day)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return str(value)  # Decimal, UUID, and anything else DuckDB may add


def from_json_value(value: Any, type_name: str) -> Any:
    """Undo :func:`to_json_value` for a column of DuckDB type ``type_name``: scalar types only; a list,
    struct or map column (``TIMESTAMP[]``, ``STRUCT(...)``) and a value that does not parse keep their
    JSON form."""
    if value is None or not isinstance(value, (str, int, float)):
        return value
    kind = type_name.upper()
    scalar = {
        "DATE": date.fromisoformat,
        "UUID": UUID,
        "INTERVAL": lambda v: timedelta(seconds=v),
        "BLOB": bytes.fromhex,
    }
    if kind.startswith("TIMESTAMP"):
        convert = datetime.fromisoformat
    elif kind.startswith("TIME"):
        convert = time_of_day.fromisoformat
    elif kind.startswith("DECIMAL"):
        convert = Decimal
    else:
        convert = scalar.get(kind)
    if convert is None or "[" in kind:
        return value
    try:
        return convert(value)
    except (ValueError, TypeError, ArithmeticError):  # decimal.InvalidOperation is an ArithmeticError
        return value
