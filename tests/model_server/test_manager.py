"""The embedded server's start-up grammar check: the command schemas compile with llama.cpp's own
converter, and a server that ignores the grammar is caught (here a scripted server stands in for it)."""

from __future__ import annotations

import json

import pytest

import model_server.manager
from model_server.manager import GRAMMAR_PROBE, LLMServerError, LocalLLMServer, check_schemas_compile
from tests.helpers import ScriptedOpenAI, ScriptedReply


def server_at(scripted: ScriptedOpenAI, tmp_path) -> LocalLLMServer:
    server = LocalLLMServer(tmp_path / "llm.log")
    server.port = int(scripted.base_url.rsplit(":", 1)[1].split("/")[0])
    return server


def test_a_server_that_applies_the_grammar_passes_the_check(tmp_path):
    answer = json.dumps({**GRAMMAR_PROBE, "rationale": "as the schema allows"})
    with ScriptedOpenAI({}, {"controller": ScriptedReply(answer, finish_reason="length")}) as scripted:
        server_at(scripted, tmp_path).check_grammar(timeout_s=5)
    ((_, body),) = scripted.requests
    schema = body["response_format"]["schema"]
    assert body["response_format"]["type"] == "json_object" and body["max_tokens"] == 64
    assert {name: schema["properties"][name]["enum"] for name in GRAMMAR_PROBE} == {
        name: [value] for name, value in GRAMMAR_PROBE.items()
    }
    assert "anyOf" in schema["properties"]["weight_modulation"]["items"]  # the grid schema's structure


def test_a_server_that_ignores_the_grammar_is_refused(tmp_path):
    free = json.dumps({"dropout": 0.2, "learning_rate": 0.001, "alpha": 0.4, "rationale": "keep"})
    with (
        ScriptedOpenAI({}, {"controller": ScriptedReply(free)}) as scripted,
        pytest.raises(LLMServerError, match="does not apply the command grammar"),
    ):
        server_at(scripted, tmp_path).check_grammar(timeout_s=5)


def test_the_command_schemas_compile_and_an_uncompilable_one_is_named(monkeypatch):
    check_schemas_compile()
    monkeypatch.setattr(model_server.manager, "command_schema", lambda m, space: {"$ref": "#/definitions/missing"})
    with pytest.raises(LLMServerError, match="cannot compile the grid command schema"):
        check_schemas_compile()
