import json

import pytest

from bus.messages import BusDecodeError, Hello, RunFinished, UpdateCommand, decode, encode


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
        ([b"hello", json.dumps({"v": 1, "run_id": "r"}).encode()], "failed validation at 'component'"),
        (
            [b"hello", json.dumps({"v": 1, "run_id": "r", "component": "t", "x": 1}).encode()],
            "failed validation at 'x'",
        ),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(frames, reason):
    with pytest.raises(BusDecodeError) as err:
        decode(frames)
    assert reason in err.value.reason


def test_update_command_enforces_the_command_space():
    with pytest.raises(ValueError):
        UpdateCommand(dropout=0.95, learning_rate=1e-3, alpha=0.4)
    assert UpdateCommand(dropout=0.9, learning_rate=0.1, alpha=1.0).alpha == 1.0


def test_hello_requires_run_id():
    with pytest.raises(ValueError):
        Hello(component="trainer")
