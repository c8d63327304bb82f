"""Arms on Ray (``--ray auto``: a local Ray instance here, as CI has no cluster): the same sweep gives every arm the
epochs the local processes give, its records reaching the recorder over its CURVE cluster socket; what a Ray arm
cannot do yet is refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tests.e2e.sweeps import epochs_by_arm, run_sweep

pytest.importorskip("ray")  # the optional extra: pip install -e '.[ray]' (the README's test command installs it)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

def test_a_sweep_through_ray_gives_the_local_sweeps_epochs_over_the_curve_socket(tmp_path, one_job_sweep):
    run_sweep(tmp_path / "ray.duckdb", tmp_path / "ray", "--ray", "auto", "--jobs", "2")
    assert epochs_by_arm(tmp_path / "ray.duckdb") == one_job_sweep
    with duckdb.connect(str(tmp_path / "ray.duckdb"), read_only=True) as con:
        configs = [json.loads(c) for (c,) in con.execute("SELECT config FROM runs").fetchall()]
        statuses = con.execute("SELECT DISTINCT status FROM runs").fetchall()
    assert statuses == [("completed",)]
    assert all(c["trainer"]["recorder_endpoint"].startswith("tcp://") for c in configs)  # the cluster socket
    assert "secret" not in json.dumps(configs)  # the keys travel to the arms, never into the database


def test_what_a_ray_driver_does_not_do_is_one_line(tmp_path):
    run = subprocess.run([sys.executable, "run.py", "--ray", "auto", "--replay", "r", "--db", str(tmp_path / "x.duckdb")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "--ray runs new arms; --replay and --resume run here, without --ray" in run.stderr


@pytest.mark.slow  # the embedded model on a Ray node (about two minutes here): python -m pytest -m slow
def test_a_ray_arm_with_the_embedded_model_calls_its_nodes_model_server(tmp_path):
    db = tmp_path / "llm.duckdb"
    run = subprocess.run([sys.executable, "run.py", "--ray", "auto", "--regime", "10", "--epochs", "2", "--arms",
                          "guided", "--db", str(db), "--out", str(tmp_path / "runs")], cwd=REPO, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT fallback, llm_calls FROM decisions ORDER BY epoch").fetchall()
    assert len(rows) == 2 and all(not fallback and calls >= 1 for fallback, calls in rows), rows


@pytest.mark.slow  # a two-node Ray cluster on this machine and a killed worker: minutes; python -m pytest -m slow
def test_a_two_node_cluster_survives_a_ray_worker_killed_mid_sweep_with_no_record_lost_or_doubled(tmp_path):
    from bench.fault_run import LocalRayCluster

    sweep_flags = ["--task", "diabetes", "--regime", "full", "--epochs", "60", "--seeds", "2", "--controller",
                   "none,heuristic"]  # fmt: skip
    db, out = tmp_path / "ray.duckdb", tmp_path / "ray"
    with LocalRayCluster() as cluster:
        sweep = subprocess.Popen([sys.executable, "run.py", *sweep_flags, "--ray", cluster.address, "--jobs", "2",
                                  "--db", str(db), "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=cluster.env)  # fmt: skip
        killed = None
        for line in sweep.stdout:
            if killed is None and "epoch  20/60" in line:  # an arm is well into its run
                killed = cluster.kill_arm_worker()
        assert sweep.wait(600) == 0 and killed is not None
    local = tmp_path / "local.duckdb"
    subprocess.run([sys.executable, "run.py", *sweep_flags, "--db", str(local), "--out", str(tmp_path / "l")],
                   cwd=REPO, check=True, capture_output=True, timeout=600)  # fmt: skip
    assert epochs_by_arm(db) == epochs_by_arm(local)
    with duckdb.connect(str(db), read_only=True) as con:
        per_run = con.execute("SELECT run_id, count(*), count(DISTINCT epoch) FROM epochs GROUP BY run_id").fetchall()
        statuses = con.execute("SELECT DISTINCT status FROM runs").fetchall()
        retried = con.execute("SELECT count(*) FROM events WHERE event = 'resumed'").fetchall()
    assert statuses == [("completed",)] and len(per_run) == 4
    assert all(n == distinct == 60 for _, n, distinct in per_run)  # none lost, none doubled
    assert retried[0][0] >= 1  # the killed arm continued from its checkpoint


@pytest.mark.slow  # 93 s on 2 cores under load: out of the default suite for its 15 minutes; -m slow runs it
def test_run_py_say_reaches_a_guided_arm_training_on_ray(tmp_path):
    db = tmp_path / "say.duckdb"
    run = subprocess.Popen([sys.executable, "run.py", "--ray", "auto", "--regime", "100", "--epochs", "12", "--arms",
                            "guided", "--controller", "heuristic", "--no-compile", "--db", str(db), "--out",
                            str(tmp_path / "runs")], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while (given := subprocess.run([sys.executable, "run.py", "say", "lower the learning rate", "--db", str(db)],
                                       cwd=REPO, capture_output=True, text=True, timeout=60)).returncode != 0:  # fmt: skip
            not_yet = ("no run is going on", "cannot be reached yet", "is not training now")
            assert time.monotonic() < deadline and run.poll() is None and any(s in given.stderr for s in not_yet), (
                given.stderr)
            time.sleep(0.5)
        stdout, stderr = run.communicate(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 0, stdout[-2000:] + stderr[-2000:]
    assert "instruction given: 'lower the learning rate'" in given.stdout
    with duckdb.connect(str(db), read_only=True) as con:
        said = con.execute("SELECT text, source FROM instructions").fetchall()
        read_by = con.execute("SELECT count(*) FROM decisions WHERE instruction_id IS NOT NULL").fetchall()[0][0]
    assert ("lower the learning rate", "say") in said and read_by >= 1  # the arm on its node took it
