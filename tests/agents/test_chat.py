"""ChatCaller through the real ChatOpenAI and openai SDK against a scripted OpenAI-compatible server:
what real servers answer — a cut-off answer, a malformed 200 body, a 4xx that names a parameter and
one that does not — and what the caller sends and remembers."""

from __future__ import annotations

import json

import pytest

from agents.chat import ChatCaller, make_chat_model, response_formats
from tests.helpers import ScriptedOpenAI, ScriptedReply, llm_settings

GOOD = json.dumps({"dropout": 0.25, "learning_rate": 5e-4, "alpha": 0.3, "rationale": "ok"})
SCHEMA = {"type": "object", "properties": {"dropout": {"type": "number"}}, "required": ["dropout"]}
CONTEXT_400 = ScriptedReply(
    status=400,
    error={
        "message": "This model's maximum context length is 2048 tokens. However, you requested 2300 tokens "
        "(2044 in the messages, 256 in the completion). Please reduce the length of the messages or completion.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    },
)


def caller_for(server: ScriptedOpenAI, provider: str = "openai", response_format: str = "auto") -> ChatCaller:
    settings = llm_settings(
        provider=provider,
        base_url=server.base_url,
        model="m",
        max_retries=0,
        timeout_s=10,
        response_format=response_format,
    )
    return ChatCaller(make_chat_model(settings), response_formats(settings), settings.temperature, settings.max_tokens)


def serve(*replies: ScriptedReply) -> ScriptedOpenAI:
    return ScriptedOpenAI({"controller": list(replies)}, {"controller": ScriptedReply(GOOD)})


def sent(server: ScriptedOpenAI) -> list[dict]:
    return [body for _, body in server.requests]


def test_every_request_carries_the_token_cap_every_server_honours_and_the_schema():
    with serve() as server:
        reply = caller_for(server)([], SCHEMA, "update_command")
    assert (reply.text, reply.error, reply.finish_reason, reply.prompt_tokens) == (GOOD, None, "stop", 50)
    (body,) = sent(server)
    assert body["max_tokens"] == 256 and "max_completion_tokens" not in body and body["temperature"] == 0.2
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "update_command", "strict": False, "schema": SCHEMA},
    }


@pytest.mark.parametrize("form", ["json_schema", "none"])
def test_an_answer_cut_off_at_the_token_cap_keeps_its_text_and_finish_reason(form):
    cut = '{"dropout": 0.25, "learning_rate": 0.0005, "alpha": 0.3, "rationale": "val acc st'
    with serve(ScriptedReply(cut, finish_reason="length")) as server:
        reply = caller_for(server, response_format=form)([], SCHEMA)
    assert (reply.text, reply.finish_reason, reply.error, reply.completion_tokens) == (cut, "length", None, 10)


@pytest.mark.parametrize(
    "body", [b"not json at all", b'{"unexpected": true}', b'{"choices": []}', b'{"choices": [{"message": 7}]}']
)
def test_a_malformed_200_body_is_a_model_error_not_an_exception(body):
    with serve(ScriptedReply(raw=body)) as server:
        reply = caller_for(server)([], SCHEMA)
    assert reply.text == "" and reply.error and ": " in reply.error  # "Type: message"


def test_a_4xx_that_names_nothing_refused_is_reported_and_changes_nothing():
    with serve(CONTEXT_400, ScriptedReply(status=429, error={"message": "Rate limit reached"})) as server:
        caller = caller_for(server)
        first, second, third = caller([], SCHEMA), caller([], SCHEMA), caller([], SCHEMA)
    assert "maximum context length" in first.error and first.adaptations == []
    assert "Rate limit" in second.error and third.text == GOOD
    forms = [body["response_format"]["type"] for body in sent(server)]
    assert forms == ["json_schema"] * 3 and all(body["max_tokens"] == 256 for body in sent(server))


@pytest.mark.parametrize(
    "refusal",
    [
        ScriptedReply(
            status=400,
            error={
                "message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
                "param": "response_format",
            },
        ),
        # llama-cpp-python answers its pydantic validation error with a 500 naming the field
        ScriptedReply(
            status=500,
            error={
                "message": "1 validation error for Request\nbody -> response_format -> type\n  Input should be "
                "'text' or 'json_object' [type=literal_error, input_value='json_schema', input_type=str]",
                "type": "internal_server_error",
            },
        ),
    ],
)
def test_a_refused_response_format_is_dropped_at_once_and_remembered(refusal):
    with serve(refusal) as server:
        caller = caller_for(server)
        first, second = caller([], SCHEMA), caller([], SCHEMA)
    assert first.text == GOOD and first.error is None
    assert first.adaptations[0].endswith("refused response_format json_schema: response_format json_object from now on")
    assert second.adaptations == []
    forms = [body["response_format"]["type"] for body in sent(server)]
    assert forms == ["json_schema", "json_object", "json_object"]
    assert sent(server)[1]["response_format"]["schema"] == SCHEMA


def test_a_refused_token_cap_name_moves_to_the_other_name_and_a_refused_temperature_is_dropped():
    max_tokens_refused = ScriptedReply(
        status=400,
        error={
            "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "param": "max_tokens",
            "code": "unsupported_parameter",
        },
    )
    temperature_refused = ScriptedReply(
        status=400,
        error={
            "message": "Unsupported value: 'temperature' does not support 0.2 with this model. "
            "Only the default (1) value is supported.",
            "param": "temperature",
        },
    )
    with serve(max_tokens_refused, temperature_refused) as server:
        caller = caller_for(server)
        first, second = caller([], SCHEMA), caller([], SCHEMA)
    assert first.text == GOOD and len(first.adaptations) == 2 and second.adaptations == []
    last = sent(server)[-1]
    assert last["max_completion_tokens"] == 256 and "max_tokens" not in last and "temperature" not in last
    assert last["response_format"]["type"] == "json_schema"  # untouched: nobody refused it


def test_the_local_server_gets_json_object_with_the_schema():
    with serve() as server:
        caller_for(server, provider="local")([], SCHEMA)
    (body,) = sent(server)
    assert body["response_format"] == {"type": "json_object", "schema": SCHEMA} and body["max_tokens"] == 256
