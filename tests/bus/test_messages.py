import json

import pytest

from bus.messages import SCHEMA_VERSION, BusDecodeError, Hello, Hyperparameter, RunFinished, TaskSpec, UpdateCommand, decode, encode


def test_round_trip_keeps_every_field():
    message = RunFinished(run_id="r1", status="completed", finished_at=12.5, reason=None)
    frames = encode(message)
    assert frames[0] == b"run_finished"
    assert decode(frames) == message


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([b"hello"], "expected 2 frames"),
        ([b"nope", b"{}"], "unknown topic 'nope'"),
        ([b"\xff\xfe", b"{}"], "topic is not ascii"),
        ([b"hello", b"{not json"], "hello body is not JSON"),
        ([b"hello", b"[1, 2]"], "must be a JSON object"),
        ([b"hello", json.dumps({"v": 99, "run_id": "r", "component": "t"}).encode()], "schema version 99"),
        ([b"hello", json.dumps({"v": SCHEMA_VERSION, "run_id": "r"}).encode()], "failed validation at 'component'"),
        (
            [b"hello", json.dumps({"v": SCHEMA_VERSION, "run_id": "r", "component": "t", "x": 1}).encode()],
            "failed validation at 'x'",
        ),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(frames, reason):
    with pytest.raises(BusDecodeError) as err:
        decode(frames)
    assert reason in err.value.reason


def test_a_schema_1_message_is_refused_by_name():
    body = json.dumps({"v": 1, "run_id": "r", "component": "t"}).encode()
    with pytest.raises(BusDecodeError, match=f"schema version 1, this build speaks {SCHEMA_VERSION}"):
        decode([b"hello", body])


def test_update_command_enforces_the_blend_range():
    with pytest.raises(ValueError):
        UpdateCommand(hyperparameters={"dropout": 0.2}, alpha=1.5)
    assert UpdateCommand(hyperparameters={"dropout": 0.9}, alpha=1.0).alpha == 1.0


def _knob(name="learning_rate", **kw):
    fields = dict(name=name, default=1e-3, low=1e-5, high=1e-1, scale="log", step=2.0, max_change=3.0, description="x")
    return Hyperparameter(**{**fields, **kw})


def test_a_knob_is_checked_and_moves_within_its_trust_region():
    lr = _knob()
    assert lr.allowed(1e-3) == (1e-3 / 3, 3e-3) and lr.allowed(5e-2) == (5e-2 / 3, 1e-1)
    assert lr.grid(1e-3) == [5e-4, 1e-3, 2e-3] and lr.clamp(1.0, 1e-3) == 3e-3
    assert lr.clamp(float("nan"), 1e-3) == 1e-3
    dropout = _knob("dropout", default=0.2, low=0.0, high=0.9, scale="linear", step=0.1, max_change=0.2)
    assert dropout.grid(0.0) == [0.0, 0.1] and dropout.allowed(0.85) == pytest.approx((0.65, 0.9))
    for bad in ({"default": 1.0}, {"low": 0.0}, {"step": 1.0}):
        with pytest.raises(ValueError):
            _knob(**bad)


def test_a_task_spec_refuses_duplicate_or_reserved_knob_names():
    fields = dict(name="t", description="d", objective="loss", mode="min", noise_band=0.0)
    assert TaskSpec(**fields, hyperparameters=[_knob()]).improvement(2.0, 1.5) == 0.5
    with pytest.raises(ValueError, match="twice"):
        TaskSpec(**fields, hyperparameters=[_knob(), _knob()])
    with pytest.raises(ValueError, match="command fields"):
        TaskSpec(**fields, hyperparameters=[_knob("alpha", default=0.5, low=0.0, high=1.0, scale="linear")])


def test_hello_requires_run_id():
    with pytest.raises(ValueError):
        Hello(component="trainer")
