"""What real models and servers do, through real processes: run.py against a scripted
OpenAI-compatible endpoint that answers, epoch by epoch, with a reasoning block, the object twice, a
trailing comma, a field given twice, a 400 "maximum context length", a malformed 200 body, a 400 that
refuses json_schema, answers cut off by the token cap and numbers off the grid; the judge with cut-off
and malformed answers; and a user's node that raises every epoch.

No decision may end as "agent graph failed", a recoverable answer must not fall back, every model
error keeps its prompt, and the notes say what happened.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_llm import run_py
from tests.e2e.test_run import query
from tests.helpers import ScriptedOpenAI, ScriptedReply

pytestmark = pytest.mark.e2e

EPOCHS = 10
KEEP = {"dropout": 0.2, "learning_rate": 0.001, "alpha": 0.4, "rationale": "steady: keep"}  # on the grid throughout
KEEP_TEXT = json.dumps(KEEP)
VERDICT = json.dumps({"verdict": "neutral", "text": "Validation accuracy barely moved."})


def boom(state):
    """A user's node that raises after validation, every epoch."""
    raise KeyError("budget")


CONTROLLER = [
    # epoch 1: a reasoning block with an object of its own, then the answer
    ScriptedReply('<think>lower it? maybe {"learning_rate": 0.0005}? no, keep.</think>\n' + KEEP_TEXT),
    ScriptedReply(KEEP_TEXT + "\n" + KEEP_TEXT),  # 2: the same object twice, on two lines
    ScriptedReply(KEEP_TEXT[:-1] + ",}"),  # 3: a trailing comma
    ScriptedReply(  # 4: a field given twice
        '{"dropout": 0.2, "learning_rate": 0.002, "learning_rate": 0.001, "alpha": 0.4, "rationale": "x"}'
    ),
    ScriptedReply(  # 5: a transient 400 that names nothing the server refuses
        status=400,
        error={
            "message": "This model's maximum context length is 2048 tokens. However, you requested 2300 tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        },
    ),
    ScriptedReply(raw=b"<html>502 Bad Gateway</html>"),  # 6: a malformed 200 body
    ScriptedReply(  # 7: the server refuses json_schema by name; the same call is retried with json_object
        status=400,
        error={"message": "response_format json_schema is not supported by this server", "param": "response_format"},
    ),
    ScriptedReply(KEEP_TEXT),
    ScriptedReply('{"dropout": 0.2, "learning_rate": 0.00', finish_reason="length"),  # 8: cut inside a number
    ScriptedReply(KEEP_TEXT),  # 8: the re-ask
    ScriptedReply(KEEP_TEXT[:-5], finish_reason="length"),  # 9: cut inside the rationale
    ScriptedReply(  # 10: numbers off the grid (a server that dropped the grammar would let them through)
        json.dumps({"dropout": 0.27, "learning_rate": 0.0017, "alpha": 0.33, "rationale": "off grid"})
    ),
]
JUDGE = [
    ScriptedReply('{"verdict": "neutral", "text": "Accuracy moved by less than', finish_reason="length"),  # epoch 2
    ScriptedReply('{"verdict": "neut', finish_reason="length"),  # 3: cut inside the verdict
    ScriptedReply(raw=b'{"choices": "none"}'),  # 4: malformed
    ScriptedReply('<think>0.2 points is noise</think>{"verdict": "neutral", "text": "Within noise.",}'),  # 5
]


@pytest.mark.slow  # 67 s on 2 cores under load: out of the default suite for its 15 minutes; -m slow runs it
def test_every_kind_of_faulty_answer_is_recovered_or_recorded_never_a_graph_failure(tmp_path):
    db, out = tmp_path / "f.duckdb", tmp_path / "runs"
    scripts = {"controller": CONTROLLER, "judge": JUDGE}
    defaults = {"controller": ScriptedReply(KEEP_TEXT), "judge": ScriptedReply(VERDICT)}
    with ScriptedOpenAI(scripts, defaults) as server:
        result = run_py(
            "--regime", "10", "--epochs", str(EPOCHS), "--arms", "guided", "--no-compile",
            "--llm-base-url", server.base_url, "--llm-command-space", "grid", "--llm-timeout", "10",
            "--nodes", "tests.e2e.test_llm_faults:boom", "--db", str(db), "--out", str(out),
            timeout=400,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "agent graph failed" not in result.stdout + result.stderr
    assert query(
        db, "SELECT count(*) FROM events WHERE event = 'graph_failed' OR data::VARCHAR LIKE '%graph failed%'"
    ) == [(0,)]
    rows = query(
        db,
        "SELECT epoch, valid, repair_attempts, fallback, fallback_reason, prompt, notes, clamped, command "
        "FROM decisions ORDER BY epoch",
    )
    assert [r[0] for r in rows] == list(range(1, EPOCHS + 1))
    decisions = {
        epoch: {
            "valid": valid, "repairs": repairs, "fallback": fallback, "reason": reason, "prompt": prompt,
            "notes": json.loads(notes), "clamped": json.loads(clamped), "command": json.loads(command),
        }
        for epoch, valid, repairs, fallback, reason, prompt, notes, clamped, command in rows
    }  # fmt: skip

    def note(epoch: int, node: str) -> dict:
        found = [n for n in decisions[epoch]["notes"] if n["node"] == node]
        assert found, (epoch, node, decisions[epoch]["notes"])
        return found[0]

    # Only the two answers that carried no answer fell back, each recorded with its prompt.
    assert {e for e, d in decisions.items() if d["fallback"]} == {5, 6}
    assert (
        decisions[5]["reason"].startswith("model call failed: ") and "maximum context length" in decisions[5]["reason"]
    )
    assert decisions[6]["reason"].startswith("model call failed: JSONDecodeError: ")
    for epoch in (5, 6):
        assert "Schema:" in decisions[epoch]["prompt"] and decisions[epoch]["command"]["alpha"] == 0.4
    assert [e for e, d in decisions.items() if d["valid"]] == [1, 2, 3, 4, 7, 9, 10]
    assert (decisions[8]["repairs"], decisions[8]["fallback"]) == (1, False)  # cut inside a number: asked again

    assert note(1, "validator")["reasoning"].startswith("lower it? maybe")
    assert note(2, "validator")["objects"].startswith("2 JSON objects, 2 with all of")
    assert note(3, "validator")["lenient_json"][0].startswith("not strict JSON")
    assert note(4, "validator")["ambiguous"] == [
        "field 'learning_rate' is given more than once; the last value is used"
    ]
    assert decisions[4]["command"]["hyperparameters"]["learning_rate"] == 0.001
    assert note(7, "controller")["adapted"] == [
        "HTTP 400 refused response_format json_schema: response_format json_object from now on"
    ]
    assert note(8, "controller")["finish_reason"] == "length"
    assert any("finish_reason length" in e for e in note(8, "repairer")["errors"])
    assert note(9, "validator")["cut_off"].startswith("the text ends inside the value of 'rationale'")
    assert decisions[10]["clamped"] == {
        "dropout": {"from": 0.27, "to": 0.3, "grid": True},
        "learning_rate": {"from": 0.0017, "to": 0.002, "grid": True},
        "alpha": {"from": 0.33, "to": 0.4, "grid": True},
    }
    knobs = decisions[10]["command"]["hyperparameters"]
    assert (knobs["dropout"], knobs["learning_rate"]) == (0.3, 0.002)
    assert all(note(e, "controller")["finish_reason"] in ("stop", "length", None) for e in decisions)

    # The user's node failed every epoch; each time the validated command was applied all the same.
    for epoch in decisions:
        failed = note(epoch, "tests.e2e.test_llm_faults:boom")
        assert (failed["action"], failed["error"]) == ("failed", "KeyError: 'budget'")
    assert query(db, "SELECT count(*) FROM events WHERE event = 'node_failed'") == [(EPOCHS,)]

    # The judge: a cut-off sentence is kept; a cut-off verdict and a malformed body fall back to the rule.
    judges = dict(query(db, "SELECT epoch, judge FROM reflections ORDER BY epoch"))
    assert judges[2] == "gpt-4o-mini" and judges[3] == "rule" and judges[4] == "rule" and judges[5] == "gpt-4o-mini"
    assert note(2, "reflector")["cut_off"].startswith("the text ends inside the value of 'text'")
    assert "must be beneficial, harmful or neutral, got 'neut'" in note(3, "reflector")["reason"]
    assert note(4, "reflector")["reason"].startswith("model call failed: ")
    assert "Now judge your previous decision" in note(4, "reflector")["prompt"]  # kept with the model error
    assert note(5, "reflector")["reasoning"] == "0.2 points is noise"

    # What went over the wire: a cap every server honours on every request; the 400 of epoch 5 changed
    # nothing; the refusal of epoch 7 switched this endpoint (controller and judge) to json_object.
    bodies = [body for _, body in server.requests]
    assert all(body["max_tokens"] == 256 for body in bodies)
    forms = [(name, body["response_format"]["type"]) for name, body in server.requests]
    refused_at = [i for i, (name, body) in enumerate(server.requests) if "json_schema" in json.dumps(body)][-1]
    assert {form for _, form in forms[: refused_at + 1]} == {"json_schema"}
    assert {form for _, form in forms[refused_at + 1 :]} == {"json_object"}
    assert sum(name == "controller" for name, _ in forms[refused_at + 1 :]) == 5  # 7 (retry), 8 twice, 9, 10
