"""Shared fixtures of the storage tests."""

from __future__ import annotations

import duckdb
import pytest

from storage.schema import migrate


@pytest.fixture
def con(tmp_path):
    """A migrated DuckDB file of the test's own (tmp_path/reflectnet.duckdb), closed afterwards."""
    connection = duckdb.connect(str(tmp_path / "reflectnet.duckdb"))
    migrate(connection)
    yield connection
    connection.close()
