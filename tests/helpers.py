"""Builders for agent-side tests, and a scripted OpenAI-compatible model server."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bus.messages import EpochMetrics, EpochSummary, Reflection, UpdateCommand

PARAM_SHAPES = {
    "conv.0.weight": [32, 1, 3, 3],
    "conv.0.bias": [32],
    "conv.3.weight": [64, 32, 3, 3],
    "conv.3.bias": [64],
    "fc.0.weight": [128, 3136],
    "fc.0.bias": [128],
    "fc.3.weight": [10, 128],
    "fc.3.bias": [10],
}


def make_metrics(
    val_accs: list[float],
    train_accs: list[float] | None = None,
    lr: float = 1e-3,
    dropout: float = 0.2,
    alpha: float = 0.4,
    previous_command: UpdateCommand | None = None,
    previous_reflection: Reflection | None = None,
    lrs: list[float] | None = None,
    dropouts: list[float] | None = None,
) -> EpochMetrics:
    """EpochMetrics for the last of ``len(val_accs)`` epochs with the given accuracy history."""
    train_accs = train_accs or [min(1.0, v + 0.01) for v in val_accs]
    lrs = lrs or [lr] * len(val_accs)
    dropouts = dropouts or [dropout] * len(val_accs)
    history = [
        EpochSummary(
            epoch=i + 1,
            train_loss=1.0 - t,
            train_acc=t,
            val_loss=1.0 - v,
            val_acc=v,
            lr=lrs[i],
            dropout=dropouts[i],
            alpha=alpha,
        )
        for i, (t, v) in enumerate(zip(train_accs, val_accs))
    ]
    last = history[-1]
    return EpochMetrics(
        run_id="run-test",
        epoch=last.epoch,
        epochs_total=20,
        regime="1pct",
        n_train=600,
        train_loss=last.train_loss,
        train_acc=last.train_acc,
        val_loss=last.val_loss,
        val_acc=last.val_acc,
        per_class_val_acc=[last.val_acc] * 10,
        grad_norms={k: 0.1 for k in PARAM_SHAPES},
        weight_norms={k: 10.0 for k in PARAM_SHAPES},
        param_shapes=PARAM_SHAPES,
        lr=lr,
        dropout=dropout,
        alpha=alpha,
        wall_s=1.0,
        history=history,
        previous_command=previous_command,
        previous_reflection=previous_reflection,
    )


# --------------------------------------------------------------------------- a scripted model server


@dataclass
class ScriptedReply:
    """One answer of :class:`ScriptedOpenAI`: a chat completion with ``content`` and ``finish_reason``;
    or, with ``status`` other than 200, the OpenAI-style error ``error``; or ``raw`` bytes sent as the
    whole 200 body (a malformed answer)."""

    content: str = ""
    finish_reason: str = "stop"
    status: int = 200
    error: dict | None = None
    raw: bytes | None = None


class ScriptedOpenAI:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint on 127.0.0.1 (a random port) that answers
    from scripts, in its own thread; use it as a context manager.

    ``route(body)`` names the script a request draws from (by default ``"judge"`` for the reflector's
    prompt, else ``"controller"``); an empty script answers with ``defaults[name]``. Every request body
    is kept in ``requests`` as ``(script name, body)``, in order.
    """

    def __init__(self, scripts: dict[str, list[ScriptedReply]], defaults: dict[str, ScriptedReply], route=None):
        self.scripts = {name: list(replies) for name, replies in scripts.items()}
        self.defaults = defaults
        self.route = route or (
            lambda body: "judge" if "judge your previous decision" in json.dumps(body) else "controller"
        )
        self.requests: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # http.server's name for the POST handler
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with scripted._lock:
                    name = scripted.route(body)
                    scripted.requests.append((name, body))
                    script = scripted.scripts.get(name) or []
                    reply = script.pop(0) if script else scripted.defaults[name]
                if reply.raw is not None:
                    payload, status = reply.raw, 200
                elif reply.status != 200:
                    payload, status = json.dumps({"error": reply.error or {}}).encode(), reply.status
                else:
                    status = 200
                    payload = json.dumps(
                        {
                            "id": f"chatcmpl-{len(scripted.requests)}",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body.get("model", "scripted"),
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": reply.content},
                                    "finish_reason": reply.finish_reason,
                                }
                            ],
                            "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
                        }
                    ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # keep the test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="scripted-openai")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
