"""``python -m model_server.serve <llama_cpp.server flags>``: llama-cpp-python's OpenAI-compatible server with
a parent-death watchdog and one extra route, ``POST /reflectnet/score``.

run.py starts the model server in its own session (so a Ctrl-C in the terminal reaches run.py only).
If run.py itself is killed (SIGKILL, OOM killer), nothing would stop the server; this wrapper exits
as soon as its parent is gone, so no orphaned model server keeps a port and the CPUs busy.

``/reflectnet/score`` returns the log-probability of each option's tokens as the continuation of a prompt:
what the expert decision form (``agents.expert.choosers``) needs to let the embedded model choose among candidate
actions. The OpenAI completions route can return prompt log-probabilities too (``echo`` with ``logprobs``),
but llama-cpp-python then sorts the whole 49,152-token vocabulary in Python for every prompt token (seconds
per call); this route reads only the option's rows of the logits and reuses the evaluated prompt across
options (llama.cpp's KV cache), so scoring five options costs about as much as evaluating them.
"""

import argparse
import os
import sys

from pydantic import BaseModel, Field

from bus.child import EXIT_ORPHANED
from bus.lifecycle import watch_parent

SCORE_PATH = "/reflectnet/score"  # agents.expert.choosers posts here
MAX_OPTIONS = 16


class ScoreRequest(BaseModel):
    """The body of ``POST /reflectnet/score``."""

    prompt: str = Field(min_length=1, max_length=20_000)
    options: list[str] = Field(min_length=1, max_length=MAX_OPTIONS)
    model: str | None = None


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def option_logprobs(llama, prompt: str, options: list) -> list:
    """For each option, the log-probability (natural log) of each of its tokens after ``prompt`` + the tokens
    before it. The prompt is evaluated once; each option reuses it from llama.cpp's KV cache. Needs a model
    loaded with ``logits_all`` (the server's default)."""
    import numpy as np

    prefix = llama.tokenize(prompt.encode(), add_bos=True, special=True)
    scored = []
    for option in options:
        full = llama.tokenize((prompt + option).encode(), add_bos=True, special=True)
        if len(full) >= llama.n_ctx():
            raise ValueError(f"prompt and option are {len(full)} tokens, beyond the context of {llama.n_ctx()}")
        boundary = max(1, min(common_prefix(prefix, full), len(full) - 1))
        if len(full) - boundary < 1 or not option:
            raise ValueError("an option adds no token to the prompt")
        cached = llama.input_ids[: llama.n_tokens].tolist()
        llama.n_tokens = min(common_prefix(cached, full), boundary - 1)  # re-evaluate at least the token before
        llama.eval(full[llama.n_tokens :])
        logits = np.asarray(llama.scores[boundary - 1 : len(full) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        scored.append([float(logp[i, token]) for i, token in enumerate(full[boundary:])])
    return scored


def add_score_route(app) -> None:
    """``POST /reflectnet/score`` ``{"prompt": str, "options": [str, ...]}`` -> ``{"logprobs": [[float, ...],
    ...], "usage": {"prompt_tokens": n, "completion_tokens": 0}}`` (n: the prompt's tokens once and each option's,
    what the request had the model read), under the server's model lock (one request at a time, like its
    completions)."""
    from fastapi import Depends, HTTPException
    from llama_cpp.server.app import authenticate, get_llama_proxy
    from starlette.concurrency import run_in_threadpool

    @app.post(SCORE_PATH, dependencies=[Depends(authenticate)])
    async def score(body: ScoreRequest, llama_proxy=Depends(get_llama_proxy)) -> dict:
        llama = llama_proxy(body.model)
        if not llama._logits_all:
            raise HTTPException(400, "scoring needs the model loaded with logits_all")
        try:
            logprobs = await run_in_threadpool(option_logprobs, llama, body.prompt, body.options)
        except (ValueError, RuntimeError) as exc:  # beyond the context, an empty option, llama_decode failing
            raise HTTPException(400, f"{type(exc).__name__}: {exc}") from None
        read = len(llama.tokenize(body.prompt.encode(), add_bos=True, special=True)) + sum(map(len, logprobs))
        return {"logprobs": logprobs, "usage": {"prompt_tokens": read, "completion_tokens": 0}}


def main(argv: list[str] | None = None) -> None:
    """Parse llama_cpp.server's model and server flags, build its app with :func:`add_score_route`, and serve
    it. (Unlike ``python -m llama_cpp.server`` it reads no ``--config_file``, HOST/PORT or SSL settings: run.py
    passes everything as flags on loopback.)"""
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    watch_parent(lambda: os._exit(EXIT_ORPHANED))  # the process has no finally blocks worth running: exit at once
    parser = argparse.ArgumentParser(prog="python -m model_server.serve")
    add_args_from_model(parser, Settings)
    args = parser.parse_args(argv)
    try:
        server_settings = parse_model_from_args(ServerSettings, args)
        model_settings = [parse_model_from_args(ModelSettings, args)]
    except Exception as exc:  # pydantic's ValidationError, or whatever the settings raise: one line
        print(f"model_server.serve: bad settings: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(2)
    app = create_app(server_settings=server_settings, model_settings=model_settings)
    add_score_route(app)
    uvicorn.run(app, host=server_settings.host, port=server_settings.port, log_level="warning")


if __name__ == "__main__":
    main()
