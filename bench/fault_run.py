"""Driving a real ``python run.py`` for the fault suite (``bench.faults``): start it in the background, find its
processes by pid from their log files, wait for an epoch or an event, kill one, send garbage to its sockets."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import zmq

from bus.discovery import pid_alive as alive

REPO = Path(__file__).resolve().parents[1]


class LiveRun:
    """One ``python run.py ...`` in the background, with its run directory's logs at hand."""

    def __init__(self, args: list[str], db: Path, out: Path, name: str, sigint: str = "default",
                 env: dict[str, str] | None = None):  # fmt: skip
        """``sigint``: how run.py inherits SIGINT — ``default`` (from a terminal) or ``ignored`` (started as a
        background job, under nohup, by some CI runners), set in the child before it starts; ``env``: its
        environment (default: this process's)."""
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
                env=env,
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

    def wait_checkpointed(self, timeout: float = 120) -> None:
        """Until every live trainer has logged an epoch (so each has a checkpoint a ``--resume`` continues from)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.records("trainer")
            trained = {pid for pid, r in records if r.get("event") == "epoch_done"}
            if all(pid in trained for pid in {pid for pid, _ in records} if alive(pid)):
                return
            time.sleep(0.1)
        raise RuntimeError(f"a live trainer logged no epoch within {timeout:g} s: {self.tail()}")

    def wait_stdout(self, text: str, timeout: float = 300) -> None:
        """Until run.py has printed a line containing ``text`` (its progress lines: the arms' epochs under --ray,
        whose trainer logs stay on their nodes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stdout_path.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"run.py exited with {self.proc.returncode} before {text!r}: {self.tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"no {text!r} within {timeout:g} s: {self.tail()}")

    def finish(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.stdout_path.read_text(errors="replace").splitlines()[-lines:])


class LocalRayCluster:
    """A two-node Ray cluster on this machine, as a cluster is set up (``ray start --head`` on loopback, then
    ``ray start --address`` for the second node), one CPU each, Ray's token authentication on (Ray >= 2.59 requires
    it) with a token made for this cluster. A context manager: ``ray stop --force`` on exit, which stops every Ray
    process of this user on the machine — run it where no other Ray is. ``env``: the environment a driver needs
    (the token); ``address``: ``127.0.0.1:PORT``. Needs the ``ray`` extra."""

    def __init__(self):
        import secrets

        from bus.transport import free_tcp_endpoint

        self.address = f"127.0.0.1:{free_tcp_endpoint().rsplit(':', 1)[1]}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}

    def ray(self, *args: str) -> None:
        subprocess.run([str(Path(sys.executable).parent / "ray"), *args], check=True, capture_output=True,
                       timeout=300, env=self.env)  # fmt: skip

    def __enter__(self) -> "LocalRayCluster":
        common = ["--num-cpus", "1", "--disable-usage-stats"]
        host, port = self.address.split(":")
        self.ray("start", "--head", "--node-ip-address", host, "--port", port, "--include-dashboard", "false", *common)
        try:
            self.ray("start", "--address", self.address, *common)
        except BaseException:
            self.ray("stop", "--force")
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.ray("stop", "--force")

    def kill_arm_worker(self) -> str:
        """SIGKILL the Ray worker process running an arm (``ray::train_arm``); what was done, for the report."""
        pids = subprocess.run(["pgrep", "-f", "ray::train_arm"], capture_output=True, text=True).stdout.split()
        if not pids:
            raise RuntimeError("no Ray worker running an arm")
        os.kill(int(pids[0]), signal.SIGKILL)
        return f"SIGKILL Ray worker ray::train_arm (pid {pids[0]})"


def query(db: Path, sql: str, params=None) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def kill(run: LiveRun, component: str, sig: int = signal.SIGKILL, pid: int | None = None) -> str:
    """Send ``sig`` to ``pid``, or to the run's newest process of ``component``; the fault as the report names it."""
    pid = run.pid(component) if pid is None else pid
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
