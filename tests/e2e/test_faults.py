"""The fault suite (bench/faults.py) as tests: real run.py invocations with processes killed by pid,
garbage on every socket, Ctrl-C and --resume, each audited against the database."""

from __future__ import annotations

import pytest

from bench import faults

pytestmark = pytest.mark.e2e


def check(outcome: faults.Outcome) -> None:
    a = outcome.audit
    detail = f"{outcome.scenario}: {a.detail} {outcome.checks}"
    assert a.runs >= 1 and a.completed == a.runs, detail
    assert a.expected > 0 and a.lost == 0 and a.extra == 0 and a.duplicates == 0, detail


@pytest.mark.slow
def test_a_killed_agent_is_restarted_and_nothing_is_lost(tmp_path):
    outcome = faults.agent_killed(tmp_path)
    check(outcome)
    assert outcome.exit_codes == [0] and outcome.checks["agent_restarts"] == 1


@pytest.mark.slow
def test_a_recorder_killed_twice_loses_and_doubles_nothing(tmp_path):
    outcome = faults.recorder_killed(tmp_path)
    check(outcome)
    assert outcome.exit_codes == [0] and outcome.checks["recorder_restarts"] == 2
    assert outcome.audit.detail["epochs"]["found"] == 6 and outcome.audit.detail["decisions"]["found"] == 6


@pytest.mark.slow
def test_a_killed_trainer_fails_the_run_and_resume_finishes_it_exactly(tmp_path):
    outcome = faults.trainer_killed(tmp_path)
    check(outcome)
    assert outcome.exit_codes == [1, 0, 0] and outcome.checks["status_after_kill"] == "failed / trainer exit code -9"
    # Model, Adam moments and RNG states all come back: the resumed run equals an uninterrupted one.
    assert outcome.checks["epochs_compared"] == 6 and outcome.checks["max_abs_val_acc_diff_vs_uninterrupted"] == 0.0


@pytest.mark.parametrize("inherited", ["default", pytest.param("ignored", marks=pytest.mark.slow)])
def test_ctrl_c_stops_every_child_and_resume_finishes_the_run(tmp_path, inherited):
    # "ignored": run.py started as a background job or under nohup inherits SIGINT ignored; it must still stop.
    outcome = faults.ctrl_c(tmp_path, inherited)
    check(outcome)
    assert outcome.exit_codes == [130, 0] and outcome.checks["status_after_sigint"] == "interrupted"
    assert outcome.checks["children_left"] == [] and outcome.checks["stop_s"] < 15


@pytest.mark.slow
def test_garbage_on_every_socket_is_rejected_with_a_reason_and_the_run_goes_on(tmp_path):
    outcome = faults.garbage(tmp_path)
    check(outcome)
    assert outcome.checks["rejections_recorded"] >= outcome.checks["frames_sent"] > 100
    assert outcome.checks["intruder_rows"] == 0


@pytest.mark.slow
def test_the_agent_and_the_model_server_die_or_hang_and_are_restarted(tmp_path):
    outcome = faults.model_server(tmp_path)
    check(outcome)
    restarts = outcome.checks["restarts"]
    assert outcome.exit_codes == [0]
    assert any(r.startswith("agent-llm: exited with code -9") for r in restarts), restarts
    assert any(r.startswith("llm: exited with code -9") for r in restarts), restarts
    assert any(r.startswith("llm: no answer within") for r in restarts), restarts
    fallbacks = outcome.checks["fallback_epochs"]
    assert "disconnected" in fallbacks.get(2, ""), fallbacks  # the decision in flight when the agent died
    assert outcome.checks["model_decisions"] >= 2  # guidance resumed after the restarts


@pytest.mark.slow
def test_a_killed_run_py_leaves_no_child_behind_and_resume_finishes_the_run(tmp_path):
    outcome = faults.orchestrator_killed(tmp_path)
    check(outcome)
    assert outcome.exit_codes == [-9, 0] and outcome.checks["status_after_kill"] == "running"
    assert outcome.checks["children_left"] == [] and outcome.checks["children_gone_s"] < 15


@pytest.mark.slow  # 49 s on 2 cores under load: out of the default suite for its 15 minutes; -m slow runs it
def test_a_frozen_agent_is_restarted_within_seconds_and_the_run_goes_on(tmp_path):
    outcome = faults.agent_frozen(tmp_path)
    check(outcome)
    assert outcome.exit_codes == [0] and outcome.checks["decisions"] == 6
    restarts = outcome.checks["restarts"]
    assert restarts == ["agent-heuristic: no answer to 3 liveness pings in a row"], restarts
    # The epoch in flight waits for the restart (about 3 missed pings and a fresh agent: seconds), less than the
    # 20 s agent timeout it waited before, let alone two; 4 epochs after the freeze take well under a minute.
    assert outcome.checks["max_wait_s"] < 20 and outcome.checks["after_freeze_s"] < 60, outcome.checks
    assert outcome.checks["fallback_epochs"] == {}, outcome.checks  # the decision in flight was retried


@pytest.mark.slow
def test_with_two_arms_live_a_killed_trainer_a_frozen_agent_and_ctrl_c_lose_and_double_nothing(tmp_path):
    outcome = faults.several_arms(tmp_path)
    check(outcome)
    assert outcome.exit_codes[0] == 130 and set(outcome.exit_codes[1:]) == {0}
    assert "failed" in outcome.checks["status_after_sigint"], outcome.checks  # the killed trainer's run
    assert any(r.startswith("agent-heuristic") for r in outcome.checks["restarts"]), outcome.checks  # the frozen agent
    assert outcome.checks["arms"] == 4
