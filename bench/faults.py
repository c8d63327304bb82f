"""The fault suite: real runs of run.py with faults injected into its processes, audited against the database.

    python -m bench.faults             # every scenario, the embedded model's included (about 6 minutes on 2 cores)
    python -m bench.faults --quick     # without the model-server scenario
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
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import duckdb
import zmq

from trainer.checkpoint import CheckpointError, read_state

REPO = Path(__file__).resolve().parents[1]
HEURISTIC = ["--regime", "100", "--epochs", "6", "--arms", "guided", "--controller", "heuristic"]


class LiveRun:
    """One ``python run.py ...`` in the background, with its run directory's logs at hand."""

    def __init__(self, args: list[str], db: Path, out: Path, name: str, sigint: str = "default"):
        """``sigint``: how run.py inherits SIGINT — ``default`` (from a terminal) or ``ignored`` (started as a
        background job, under nohup, by some CI runners), set in the child before it starts."""
        self.db, self.out = db, out
        self.stdout_path = out.parent / f"{name}.stdout.txt"
        out.mkdir(parents=True, exist_ok=True)
        disposition = {"default": signal.SIG_DFL, "ignored": signal.SIG_IGN}[sigint]
        with self.stdout_path.open("a") as stdout:
            self.proc = subprocess.Popen(
                [sys.executable, "run.py", *args, "--db", str(db), "--out", str(out)],
                cwd=REPO,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: signal.signal(signal.SIGINT, disposition),
            )
        self.started = time.monotonic()

    def records(self, component: str) -> list[tuple[int, dict]]:
        """(pid, event) for every JSON line ``component`` processes logged under ``out``."""
        found = []
        for path in sorted(self.out.glob(f"*/logs/{component}-*.jsonl")):
            pid = int(path.stem.rsplit("-", 1)[1])
            for line in path.read_text(errors="replace").splitlines():
                try:
                    found.append((pid, json.loads(line)))
                except ValueError:
                    continue  # a line cut short by a kill
        return found

    def pid(self, component: str) -> int:
        """The live process of ``component`` (trainer, agent, recorder, orchestrator, llm)."""
        if component == "llm":
            pids = [
                r.get("server_pid") or r.get("pid")
                for _, r in self.records("orchestrator")
                if r.get("event") == "llm_server_ready" or (r.get("event") == "child_restarted" and r["child"] == "llm")
            ]
        else:
            pids = [pid for pid, _ in self.records(component)]
        for pid in reversed(pids):
            if alive(pid):
                return pid
        raise RuntimeError(f"no live {component} process under {self.out}")

    def endpoints(self) -> dict[str, str]:
        """The bus endpoints of this invocation, from the configs run.py wrote into the run directory."""
        run_dir = max(self.out.glob("*/recorder.json"), key=lambda p: p.stat().st_mtime).parent
        recorder = json.loads((run_dir / "recorder.json").read_text())
        found = {"recorder": recorder["endpoint"], "recorder_control": recorder["control_endpoint"]}
        for path in run_dir.glob("agent-*.json"):
            found[path.stem] = json.loads(path.read_text())["endpoint"]
        return found

    def wait_epoch(self, epoch: int, timeout: float = 300) -> None:
        """Until the current trainer has logged ``epoch`` (an epoch number of its run, resumed ones included)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [r["epoch"] for _, r in self.records("trainer") if r.get("event") == "epoch_done"]
            if done and max(done) >= epoch:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"run.py exited with {self.proc.returncode} before epoch {epoch}: {self.tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"no epoch {epoch} within {timeout:g} s: {self.tail()}")

    def wait_event(self, component: str, event: str, timeout: float = 300, **fields) -> dict:
        """Until ``component`` has logged ``event`` with these field values."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, r in self.records(component):
                if r.get("event") == event and all(r.get(k) == v for k, v in fields.items()):
                    return r
            if self.proc.poll() is not None:
                raise RuntimeError(f"run.py exited with {self.proc.returncode} before {event}: {self.tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"no {component} event {event!r} within {timeout:g} s: {self.tail()}")

    def finish(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.stdout_path.read_text(errors="replace").splitlines()[-lines:])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not reaped yet) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def query(db: Path, sql: str, params=None) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def send_garbage(endpoints: dict[str, str], frames_per_socket: int, seed: int = 0) -> int:
    """Random and malformed multipart frames to every socket of the bus; returns how many were sent."""
    rng = random.Random(seed)
    samples = [
        [b"epoch_record", b"{garbage"],
        [b"\xff\xfe", b"{}"],
        [b"decision", b'{"v": 999}'],
        [b"epoch_metrics", b'{"v": 1, "run_id": "not-a-run-of-this-invocation"}'],
        [b"control", b'{"v": 1, "op": "format-the-disk"}'],
        [b"1", b"log_event", b'{"v": 1, "ts": 0, "run_id": "intruder", "component": "x", "pid": 1, "level": "info", "event": "x"}'],
        [b"99999999999999999999", b"epoch_record", b"{}"],
        [b""],
    ]  # fmt: skip
    ctx = zmq.Context()
    sent = 0
    try:
        for name, endpoint in endpoints.items():
            for i in range(frames_per_socket):
                frames = samples[i % len(samples)] if i < len(samples) else [
                    rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 4))
                ]  # fmt: skip
                # REP peers need a REQ-shaped envelope; DEALER gives any frames to the recorder's ROUTER.
                kind = zmq.DEALER if name == "recorder" else zmq.REQ
                sock = ctx.socket(kind)
                sock.setsockopt(zmq.LINGER, 200)
                sock.connect(endpoint)
                sock.send_multipart(frames)
                if kind == zmq.REQ:
                    sock.poll(2000)  # a REP peer answers every request, garbage included
                sock.close()
                sent += 1
    finally:
        ctx.term()
    return sent


@dataclass
class Audit:
    runs: int = 0
    completed: int = 0
    expected: int = 0
    found: int = 0
    lost: int = 0
    extra: int = 0
    duplicates: int = 0
    detail: dict[str, dict[str, int]] = field(default_factory=dict)


def audit(db: Path, out: Path) -> Audit:
    """Compare the database with what the trainers of every run under ``out`` checkpointed and logged."""
    runs = query(db, "SELECT run_id, arm, status, config FROM runs")
    logged: dict[tuple[str, int], dict] = {}
    for path in out.glob("*/logs/trainer-*.jsonl"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "epoch_done":
                logged[(record["run_id"], record["epoch"])] = record
    expected: dict[str, set] = {"epochs": set(), "decisions": set(), "reflections": set()}
    result = Audit(runs=len(runs), completed=sum(status == "completed" for _, _, status, _ in runs))
    for run_id, arm, _, config in runs:
        trainer = json.loads(config)["trainer"]
        checkpoint = (
            Path(trainer["checkpoint_dir"] or Path(trainer["run_dir"]) / "checkpoints") / f"{run_id}.safetensors"
        )
        try:
            ran = read_state(checkpoint).epoch
        except CheckpointError:
            ran = 0
        for epoch in range(1, ran + 1):
            expected["epochs"].add((run_id, epoch))
            if arm == "guided":
                expected["decisions"].add((run_id, epoch))
                if logged.get((run_id, epoch), {}).get("reflection"):
                    expected["reflections"].add((run_id, epoch))
    for table, keys in expected.items():
        rows = query(db, f"SELECT run_id, epoch FROM {table}")
        found = set(rows)
        if table == "reflections":  # the log may miss the last epoch before a kill: count it as expected if stored
            keys = keys | {k for k in found if k in expected["decisions"] and k not in logged}
        lost, extra, dup = len(keys - found), len(found - keys), len(rows) - len(found)
        result.detail[table] = {"expected": len(keys), "found": len(found), "lost": lost, "extra": extra, "dup": dup}
        result.expected += len(keys)
        result.found += len(found)
        result.lost += lost
        result.extra += extra
        result.duplicates += dup
    twice = query(
        db, "SELECT count(*) - count(DISTINCT (ts, pid, component, event, CAST(data AS VARCHAR))) FROM events"
    )[0][0]
    result.detail["events"] = {"found": query(db, "SELECT count(*) FROM events")[0][0], "dup": twice}
    result.duplicates += twice
    return result


@dataclass
class Outcome:
    scenario: str
    faults: list[str]
    exit_codes: list[int]
    audit: Audit
    wall_s: float
    checks: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        a = self.audit
        return a.lost == 0 and a.duplicates == 0 and a.extra == 0 and a.completed == a.runs > 0


def kill(run: LiveRun, component: str, sig: int = signal.SIGKILL) -> str:
    pid = run.pid(component)
    os.kill(pid, sig)
    return f"{signal.Signals(sig).name} {component} (pid {pid})"


def run_id_of(db: Path) -> str:
    return query(db, "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1")[0][0]


def decisions(db: Path) -> list[tuple]:
    return query(db, "SELECT epoch, fallback, fallback_reason FROM decisions ORDER BY epoch")


def restarts(run: LiveRun, child_prefix: str) -> int:
    return sum(
        1
        for _, r in run.records("orchestrator")
        if r.get("event") == "child_restarted" and r["child"].startswith(child_prefix)
    )


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
}


def report(outcomes: list[Outcome]) -> str:
    lines = [
        "| scenario | faults injected | exit codes | runs completed | records expected | found | lost | extra | duplicates | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        a = o.audit
        lines.append(
            f"| {o.scenario} | {'; '.join(o.faults)} | {' '.join(map(str, o.exit_codes))} | {a.completed}/{a.runs} | "
            f"{a.expected} | {a.found} | {a.lost} | {a.extra} | {a.duplicates} | {o.wall_s:.0f} |"
        )
    total = Counter()
    for o in outcomes:
        total.update(faults=len(o.faults), runs=o.audit.runs, completed=o.audit.completed, expected=o.audit.expected,
                     found=o.audit.found, lost=o.audit.lost, extra=o.audit.extra, duplicates=o.audit.duplicates)  # fmt: skip
    lines.append(
        f"| **all** | {total['faults']} | | {total['completed']}/{total['runs']} | {total['expected']} | "
        f"{total['found']} | **{total['lost']}** | {total['extra']} | **{total['duplicates']}** | |"
    )
    lines.append("")
    for o in outcomes:
        lines.append(f"- {o.scenario}: {json.dumps(o.checks)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the embedded model's scenario")
    parser.add_argument("--only", default="", help=f"comma list of scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument(
        "--keep", type=Path, default=None, help="work in this folder and keep it (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or [n for n in SCENARIOS if not (args.quick and n == "llm")]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
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
