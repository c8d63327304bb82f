"""The fault suite: real runs of run.py with faults injected into its processes, audited against the database.

    python -m bench.faults             # every scenario, the embedded model's included (about 6 minutes on 2 cores)
    python -m bench.faults --quick     # without the model-server and Ray-cluster scenarios
    python -m bench.faults --json      # the figures as JSON too

Each scenario starts ``python run.py`` as a user would, kills or stops one of its processes by pid
(found from the per-process log files in the run directory) or sends garbage to its sockets, resumes
the run where the scenario says so, and then audits the database against what actually ran:

* expected: for every run, the epochs its trainer checkpointed (the checkpoint is written before an
  epoch's records are sent, so it is the ground truth), one decision per epoch of a guided run, and a
  reflection for every epoch whose trainer log says it got one;
* found: the rows in ``epochs``, ``decisions`` and ``reflections``;
* lost = expected - found, extra = found - expected, duplicates = rows beyond one per key, plus
  events stored twice. All three must be 0, and every run must end ``completed``.

tests/e2e/test_faults.py runs the same scenarios and asserts exactly that.

The parts: ``bench.fault_run`` drives run.py and its processes, ``bench.fault_audit`` audits and reports;
this module holds the scenarios and the command line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench.fault_audit import Outcome, audit, report
from bench.fault_run import LiveRun, LocalRayCluster, alive, decisions, kill, query, restarts, run_id_of, send_garbage

HEURISTIC = ["--regime", "100", "--epochs", "6", "--arms", "guided", "--controller", "heuristic"]


def agent_killed(work: Path) -> Outcome:
    """SIGKILL the agent between two decisions: it is restarted before the next one is asked for."""
    db, out = work / "agent.duckdb", work / "agent"
    run = LiveRun([*HEURISTIC, "--agent-timeout", "5", "--agent-retries", "0"], db, out, "agent")
    run.wait_epoch(2)
    faults = [kill(run, "agent")]
    code = run.finish()
    rows = decisions(db)
    checks = {"agent_restarts": restarts(run, "agent"), "fallback_epochs": [e for e, fallback, _ in rows if fallback]}
    return Outcome("agent killed", faults, [code], audit(db, out), time.monotonic() - run.started, checks)


def agent_frozen(work: Path) -> Outcome:
    """SIGSTOP the agent while the trainer asks it for epoch 2 (what a deadlocked node looks like from
    outside: the process holds its sockets and never answers). The orchestrator's liveness pings find it
    within seconds and restart it; the decision in flight is retried against the new agent, so the
    epochs after the freeze take seconds, not the 20 s agent timeout each."""
    db, out = work / "frozen.duckdb", work / "frozen"
    run = LiveRun(["--regime", "10", "--epochs", "6", "--arms", "guided", "--controller", "heuristic"], db, out, "frozen")
    run.wait_event("trainer", "agent_asked", epoch=2)
    faults = [kill(run, "agent", signal.SIGSTOP)]
    frozen_at = time.monotonic()
    code = run.finish()
    rows = decisions(db)
    checks = {
        "after_freeze_s": round(time.monotonic() - frozen_at, 1),
        "restarts": [f"{r['child']}: {r['reason']}" for _, r in run.records("orchestrator")
                     if r.get("event") == "child_restarted"],
        "fallback_epochs": {epoch: reason[:80] for epoch, fallback, reason in rows if fallback},
        "decisions": len(rows),
        # The longest the trainer waited for one decision after the freeze (the agent timeout is 20 s).
        "max_wait_s": max(r["waited_ms"] for _, r in run.records("trainer") if r.get("event") == "epoch_done") / 1000,
    }  # fmt: skip
    return Outcome("agent frozen", faults, [code], audit(db, out), time.monotonic() - run.started, checks)


def recorder_killed(work: Path) -> Outcome:
    """SIGKILL the recorder twice mid-run: restarted each time, every record stored exactly once."""
    db, out = work / "recorder.duckdb", work / "recorder"
    run = LiveRun(HEURISTIC, db, out, "recorder")
    run.wait_epoch(2)
    faults = [kill(run, "recorder")]
    run.wait_epoch(4)
    faults.append(kill(run, "recorder"))
    code = run.finish()
    checks = {"recorder_restarts": restarts(run, "recorder")}
    return Outcome("recorder killed", faults, [code], audit(db, out), time.monotonic() - run.started, checks)


def trainer_killed(work: Path) -> Outcome:
    """SIGKILL the trainer at epoch 3 of a baseline run, resume it, and compare with an uninterrupted run."""
    db, out = work / "trainer.duckdb", work / "trainer"
    args = ["--regime", "100", "--epochs", "6", "--arms", "baseline"]
    run = LiveRun(args, db, out, "trainer")
    run.wait_epoch(3)
    faults = [kill(run, "trainer")]
    codes = [run.finish()]
    status = " / ".join(query(db, "SELECT status, status_reason FROM runs")[0])
    resumed = LiveRun(["--resume", run_id_of(db)], db, out, "trainer-resume")
    codes.append(resumed.finish())
    reference_db = work / "trainer-reference.duckdb"
    codes.append(LiveRun(args, reference_db, work / "trainer-reference", "trainer-reference").finish())
    pairs = list(zip(query(db, "SELECT val_acc FROM epochs ORDER BY epoch"),
                     query(reference_db, "SELECT val_acc FROM epochs ORDER BY epoch")))  # fmt: skip
    checks = {
        "status_after_kill": status,
        "max_abs_val_acc_diff_vs_uninterrupted": max(abs(a[0] - b[0]) for a, b in pairs) if pairs else None,
        "epochs_compared": len(pairs),
    }
    return Outcome("trainer killed + --resume", faults, codes, audit(db, out), time.monotonic() - run.started, checks)


def ctrl_c(work: Path, inherited: str = "default") -> Outcome:
    """SIGINT to run.py at epoch 2: every child gone, run interrupted; then --resume completes it.

    ``inherited``: run.py's SIGINT disposition at start, ``default`` or ``ignored`` (a background job)."""
    db, out = work / f"sigint-{inherited}.duckdb", work / f"sigint-{inherited}"
    run = LiveRun(HEURISTIC, db, out, f"sigint-{inherited}", sigint=inherited)
    run.wait_epoch(2)
    children = [run.pid(c) for c in ("trainer", "agent", "recorder")]
    run.proc.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    codes = [run.finish(60)]
    stop_s = time.monotonic() - stopped
    left = [pid for pid in children if alive(pid)]
    status = query(db, "SELECT status FROM runs")[0][0]
    codes.append(LiveRun(["--resume", run_id_of(db)], db, out, "sigint-resume").finish())
    checks = {"stop_s": round(stop_s, 2), "children_left": left, "status_after_sigint": status}
    scenario = "Ctrl-C + --resume" + (" (SIGINT inherited as ignored)" if inherited == "ignored" else "")
    return Outcome(scenario, ["SIGINT run.py"], codes, audit(db, out), time.monotonic() - run.started, checks)


def orchestrator_killed(work: Path) -> Outcome:
    """SIGKILL run.py itself at epoch 3: every child exits by itself, the run stays 'running', --resume finishes it."""
    db, out = work / "orchestrator.duckdb", work / "orchestrator"
    run = LiveRun(HEURISTIC, db, out, "orchestrator")
    run.wait_epoch(3)
    children = [run.pid(c) for c in ("trainer", "agent", "recorder")]
    faults = [f"SIGKILL run.py (pid {run.proc.pid})"]
    run.proc.kill()
    codes = [run.finish(30)]
    killed = time.monotonic()
    while any(alive(pid) for pid in children) and time.monotonic() - killed < 60:
        time.sleep(0.1)
    gone_s = time.monotonic() - killed
    left = [pid for pid in children if alive(pid)]
    status = query(db, "SELECT status FROM runs")[0][0]
    codes.append(LiveRun(["--resume", run_id_of(db)], db, out, "orchestrator-resume").finish())
    checks = {"children_gone_s": round(gone_s, 2), "children_left": left, "status_after_kill": status}
    return Outcome("run.py killed + --resume", faults, codes, audit(db, out), time.monotonic() - run.started, checks)


def garbage(work: Path) -> Outcome:
    """Random and malformed frames to every socket mid-run: dropped with a reason, the run goes on."""
    db, out = work / "garbage.duckdb", work / "garbage"
    run = LiveRun([*HEURISTIC, "--epochs", "5"], db, out, "garbage")
    run.wait_epoch(2)
    sent = send_garbage(run.endpoints(), frames_per_socket=60)
    code = run.finish()
    rejected = query(
        db, "SELECT count(*) FROM events WHERE event IN ('bad_frame', 'bad_control_frame', 'record_rejected', "
        "'request_rejected', 'unexpected_message')"
    )[0][0]  # fmt: skip
    intruders = query(db, "SELECT count(*) FROM runs WHERE run_id = 'intruder'")[0][0]
    checks = {"frames_sent": sent, "rejections_recorded": rejected, "intruder_rows": intruders}
    return Outcome("garbage on every socket", [f"{sent} bad frames"], [code], audit(db, out),
                   time.monotonic() - run.started, checks)  # fmt: skip


def model_server(work: Path) -> Outcome:
    """With the embedded model: the agent SIGKILLed in the middle of a decision (epoch 2), the model server
    SIGKILLed (epoch 4) and frozen by SIGSTOP (epoch 6). Each is restarted; the run completes."""
    db, out = work / "llm.duckdb", work / "llm"
    args = ["--regime", "100", "--epochs", "10", "--arms", "guided", "--controller", "llm", "--llm-timeout", "15",
            "--agent-retries", "0"]  # fmt: skip
    run = LiveRun(args, db, out, "llm")
    run.wait_event("trainer", "agent_asked", epoch=2)
    time.sleep(0.5)  # the model is answering now (a decision takes seconds)
    faults = [kill(run, "agent") + " mid-decision"]
    run.wait_epoch(4)
    faults.append(kill(run, "llm"))
    run.wait_epoch(6)
    faults.append(kill(run, "llm", signal.SIGSTOP))
    code = run.finish()
    rows = decisions(db)
    checks = {
        "restarts": [f"{r['child']}: {r['reason']}" for _, r in run.records("orchestrator")
                     if r.get("event") == "child_restarted"],
        "fallback_epochs": {epoch: reason[:60] for epoch, fallback, reason in rows if fallback},
        "model_decisions": sum(1 for _, fallback, _ in rows if not fallback),
    }  # fmt: skip
    return Outcome("agent + model server", faults, [code], audit(db, out), time.monotonic() - run.started, checks)


def several_arms(work: Path) -> Outcome:
    """With ``--jobs 2`` (two arms live at once, one heuristic agent serving both guided runs): SIGKILL a trainer
    at epoch 2, SIGSTOP the shared agent while a trainer asks it (epoch 4 or later), SIGINT run.py once the
    orchestrator has restarted the frozen agent;
    then ``--resume`` every run left unfinished and the same command again for the arms that never started."""
    db, out = work / "jobs.duckdb", work / "jobs"
    args = ["--regime", "100", "--epochs", "10", "--seeds", "2", "--controller", "heuristic", "--jobs", "2"]
    run = LiveRun(args, db, out, "jobs")
    run.wait_epoch(2)
    trained = next((pid for pid, r in reversed(run.records("trainer"))
                    if r.get("event") == "epoch_done" and r["epoch"] >= 2 and alive(pid)), None)  # fmt: skip
    if trained is None:
        raise RuntimeError(f"no live trainer past epoch 2 under {out}: {run.tail()}")
    faults = [kill(run, "trainer", pid=trained) + " after epoch 2"]  # it has a checkpoint: --resume continues it
    asked = run.wait_event("trainer", "agent_asked", epoch=4)
    faults.append(kill(run, "agent", signal.SIGSTOP) + f" (asked by {asked['run_id']})")
    run.wait_event("orchestrator", "child_restarted", child="agent-heuristic")  # found frozen, restarted
    run.wait_checkpointed()  # every live arm has one, so that --resume can continue each one the SIGINT stops
    run.proc.send_signal(signal.SIGINT)
    faults.append("SIGINT run.py")
    codes = [run.finish(120)]
    after_stop = dict(query(db, "SELECT run_id, status FROM runs"))
    for run_id, status in after_stop.items():
        if status != "completed":
            codes.append(LiveRun(["--resume", run_id], db, out, f"jobs-resume-{run_id}").finish())
    codes.append(LiveRun(args, db, out, "jobs-rest").finish())  # the arms the SIGINT kept from starting
    checks = {
        "status_after_sigint": sorted(after_stop.values()),
        "restarts": [f"{r['child']}: {r['reason']}" for _, r in run.records("orchestrator")
                     if r.get("event") == "child_restarted"],
        "arms": len(query(db, "SELECT run_id FROM runs")),
    }  # fmt: skip
    return Outcome("--jobs 2: trainer killed, agent frozen, Ctrl-C, --resume", faults, codes, audit(db, out),
                   time.monotonic() - run.started, checks)  # fmt: skip


def ray_cluster(work: Path) -> Outcome:
    """A two-node Ray cluster on this machine (``ray start --head`` + ``ray start --address``, Ray's token auth on)
    and a sweep through ``--ray ADDRESS --jobs 2``: a Ray worker running an arm SIGKILLed by pid at epoch 20 of 60.
    Ray retries the task and the arm resumes from its checkpoint (the nodes share this disk)."""
    db, out = work / "ray.duckdb", work / "ray"
    args = ["--task", "diabetes", "--regime", "full", "--epochs", "60", "--seeds", "2", "--controller", "heuristic",
            "--jobs", "2"]  # fmt: skip
    with LocalRayCluster() as cluster:
        run = LiveRun([*args, "--ray", cluster.address], db, out, "ray", env=cluster.env)
        try:
            run.wait_stdout("epoch  20/60")
            faults = [cluster.kill_arm_worker()]
            code = run.finish()
        finally:
            if run.proc.poll() is None:  # not left running against a cluster that is being stopped
                run.proc.kill()
    resumed = query(db, "SELECT count(*) FROM events WHERE event = 'resumed'")[0][0]
    checks = {"resumed_events": resumed, "arms": len(query(db, "SELECT run_id FROM runs"))}
    return Outcome("Ray cluster: worker killed", faults, [code], audit(db, out), time.monotonic() - run.started, checks)


QUICK_SKIPS = ("llm", "ray")  # the slowest: minutes each
SCENARIOS: dict[str, Callable[[Path], Outcome]] = {
    "agent": agent_killed,
    "recorder": recorder_killed,
    "trainer": trainer_killed,
    "sigint": ctrl_c,
    "sigint-ignored": lambda work: ctrl_c(work, "ignored"),
    "frozen": agent_frozen,
    "orchestrator": orchestrator_killed,
    "garbage": garbage,
    "llm": model_server,
    "jobs": several_arms,
    "ray": ray_cluster,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the embedded model's and the Ray cluster's scenarios")
    parser.add_argument("--only", default="", help=f"comma list of scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument(
        "--keep", type=Path, default=None, help="work in this folder and keep it (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or [n for n in SCENARIOS if not (args.quick and n in QUICK_SKIPS)]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if "ray" in names and importlib.util.find_spec("ray") is None:
        if args.only:
            parser.error("scenario ray needs the ray extra: pip install -e '.[ray]'")
        print("scenario ray skipped: the ray extra is not installed (pip install -e '.[ray]')", file=sys.stderr)
        names.remove("ray")
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="reflectnet-faults-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in names:
            print(f"scenario {name} ...", file=sys.stderr, flush=True)
            outcomes.append(SCENARIOS[name](work))
    print(report(outcomes))
    if args.json:
        print(json.dumps([{**o.__dict__, "audit": o.audit.__dict__} for o in outcomes], default=str, indent=2))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
