"""The study's protocol (orchestration.study) and its resume query (storage.queries.interrupted_runs)."""

from __future__ import annotations

from orchestration.study import (
    BAD_STARTS,
    STUDY_CONTROLLERS,
    STUDY_SEED,
    StudySweep,
    run_study,
    study_sweeps,
    sweep_spec,
)


def test_the_published_study_covers_every_cell_the_issue_asks_for_from_both_starts():
    sweeps = study_sweeps()
    cells = {(s.task, s.regime, bool(s.start)) for s in sweeps}
    for task, regime in [("mnist", "100"), ("mnist", "1pct"), ("diabetes", "full"), ("cartpole", "4k")]:
        assert {(task, regime, False), (task, regime, True)} <= cells
    assert all(s.seeds >= 5 and s.seed >= STUDY_SEED for s in sweeps)
    assert all(s.controllers == STUDY_CONTROLLERS for s in sweeps)
    assert {"none", "aa", "random", "plateau", "heuristic", "llm"} == set(STUDY_CONTROLLERS)


def test_the_quick_study_has_both_starts_and_every_controller_on_a_cheap_task():
    quick = study_sweeps(quick=True)
    assert [bool(s.start) for s in quick] == [False, True]
    assert all(s.task == "diabetes" and s.epochs <= 20 and s.seeds >= 3 for s in quick)


def test_a_sweep_becomes_the_training_commands_own_run_specification(tmp_path):
    sweep = StudySweep("diabetes", "full", 4, 2, BAD_STARTS["diabetes"])
    spec = sweep_spec(sweep, tmp_path / "s.duckdb", tmp_path / "runs", ["--device", "cpu"])
    assert (spec.task, spec.regimes, spec.epochs, spec.seed, spec.seeds) == ("diabetes", ["full"], 4, STUDY_SEED, 2)
    assert spec.controllers == list(STUDY_CONTROLLERS)
    assert spec.start == BAD_STARTS["diabetes"]
    assert "bad start learning_rate=0.0001" in sweep.label


def test_a_sweep_the_training_command_refuses_stops_the_study_with_one_line(tmp_path, capsys):
    bad = StudySweep("diabetes", "no-such-regime", 2, 1)
    assert run_study([bad], tmp_path / "s.duckdb", tmp_path / "runs") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-regime" in err[0]


def test_the_published_results_hold_exactly_the_seeds_and_controllers_the_protocol_names():
    """docs/results.csv is the protocol's output: each sweep's cell holds every seed it names, for every
    controller, and no other seed (a re-run on other seeds is checked against it, not merged into it)."""
    import json
    from collections import defaultdict
    from pathlib import Path

    from storage.results import read_results_csv

    published = read_results_csv(Path(__file__).resolve().parents[1] / "docs" / "results.csv")
    seeds = defaultdict(set)
    for run in published:
        seeds[run.task, run.regime, json.loads(run.start or "{}") != {}, run.epochs, run.controller].add(run.seed)
    for sweep in study_sweeps():
        for controller in set(STUDY_CONTROLLERS) - {"aa"}:  # the A/A arm is recorded under controller "none"
            cell = (sweep.task, sweep.regime, bool(sweep.start), sweep.epochs, controller)
            assert seeds.pop(cell) == set(range(sweep.seed, sweep.seed + sweep.seeds)), cell
    assert not seeds  # nothing published outside the protocol
