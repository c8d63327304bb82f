"""The query ``run.py study`` resumes with (storage.queries.interrupted_runs); ``con``: tests/storage/conftest.py."""

from __future__ import annotations

import json

from storage import queries


def _run(con, run_id, fingerprint, status, started):
    con.execute(
        "INSERT INTO runs (run_id, pair_id, arm, regime, n_train, controller, seed, epochs, status, started_at, config)"
        " VALUES (?, 'p', 'baseline', 'full', 353, 'none', 0, 3, ?, TIMESTAMP '2026-01-01' + to_seconds(?), ?)",
        [run_id, status, started, json.dumps({"fingerprint": fingerprint})],
    )


def test_interrupted_runs_are_the_latest_interrupted_run_of_each_fingerprint_not_completed_since(con):
    _run(con, "a1", "fa", "interrupted", 1)
    _run(con, "a2", "fa", "interrupted", 2)  # the later one is continued
    _run(con, "b1", "fb", "interrupted", 1)
    _run(con, "b2", "fb", "completed", 2)  # completed since: nothing to continue
    _run(con, "c1", "fc", "failed", 1)  # a failed run runs again, it is not continued
    _run(con, "d1", "fd", "interrupted", 1)  # not asked for
    assert queries.interrupted_runs(con, ["fa", "fb", "fc"]) == ["a2"]
    assert queries.interrupted_runs(con, []) == []
