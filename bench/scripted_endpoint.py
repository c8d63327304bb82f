"""A scripted OpenAI-compatible chat endpoint on loopback: what the tests use for a capable remote model, and the
benchmark for a remote model's latency (``python -m bench``: asynchronous decisions against an endpoint that answers
in 5 s). No hub and no weights: every answer comes from a script."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
    is kept in ``requests`` as ``(script name, body)``, in order. ``delay_s``: each answer is sent that long after
    its request arrived (a remote model's latency; requests are served in parallel).
    """

    def __init__(self, scripts: dict[str, list[ScriptedReply]], defaults: dict[str, ScriptedReply], route=None,
                 delay_s: float = 0.0):
        self.delay_s = delay_s
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
                if scripted.delay_s:
                    time.sleep(scripted.delay_s)
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
