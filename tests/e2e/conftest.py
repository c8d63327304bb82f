"""The one-job sweep that ``--jobs 2`` and ``--ray`` are each compared against, trained once per session: a sweep of
4 arms is about 40 s here, and both comparisons need the same reference."""

from __future__ import annotations

import pytest

from tests.e2e.sweeps import epochs_by_arm, run_sweep


@pytest.fixture(scope="session")
def one_job_sweep(tmp_path_factory) -> dict[tuple, list[tuple]]:
    """:func:`epochs_by_arm` of :data:`SWEEP` run with ``--jobs 1``, the reference every other way of running it
    must reproduce epoch for epoch."""
    work = tmp_path_factory.mktemp("one-job")
    run_sweep(work / "j1.duckdb", work / "runs", "--jobs", "1")
    arms = epochs_by_arm(work / "j1.duckdb")
    assert len(arms) == 4 and len({k for runs in arms.values() for _, k in runs}) > 1  # the heuristic did act
    return arms
