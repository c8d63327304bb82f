"""The recorder's cluster socket (``bus.curve``) through a real recorder process: records sent with this
invocation's CURVE keys are stored exactly once and acknowledged; a plaintext record, or one under keys the
invocation did not make, is refused (nothing stored, ``cluster_peer_refused`` logged); a cluster endpoint without
keys is refused when the configuration is checked."""

from __future__ import annotations

import json

import duckdb
import pytest
import zmq
from pydantic import ValidationError

from bus.curve import new_cluster_keys
from bus.messages import ControlRequest
from bus.transport import RecordSender, RequestClient, free_tcp_endpoint
from storage.recorder import RecorderConfig
from tests.storage.test_recorder import epoch_record, run_started, start_recorder, wait_ping


def cluster_endpoint() -> str:
    return free_tcp_endpoint().replace("127.0.0.1", "0.0.0.0")  # a routable address, as a cluster head binds


def test_records_from_another_host_arrive_only_under_the_invocations_curve_keys(tmp_path):
    server_keys, client_keys = new_cluster_keys()
    _, stranger_keys = new_cluster_keys()  # another invocation's client: a valid key pair, not this one's
    cluster = cluster_endpoint()
    cfg = RecorderConfig(db_path=tmp_path / "c.duckdb", endpoint=free_tcp_endpoint(),
                         control_endpoint=free_tcp_endpoint(), run_dir=tmp_path, flush_interval_s=0.05,
                         cluster_endpoint=cluster, cluster_keys=server_keys)  # fmt: skip
    proc = start_recorder(cfg, tmp_path / "recorder.json")
    ctx = zmq.Context()
    control = RequestClient(ctx, cfg.control_endpoint, timeout_ms=1000, retries=0)
    to_cluster = cluster.replace("0.0.0.0", "127.0.0.1")
    remote = RecordSender(ctx, to_cluster, resend_after_s=0.5, curve=client_keys)
    plain = RecordSender(ctx, to_cluster, resend_after_s=0.5)  # no keys: a plaintext peer
    stranger = RecordSender(ctx, to_cluster, resend_after_s=0.5,
                            curve=client_keys.model_copy(update={"public": stranger_keys.public,
                                                                 "secret": stranger_keys.secret}))  # fmt: skip
    try:
        wait_ping(control, proc)
        remote.send(run_started("rc"))
        for epoch in (1, 2, 3):
            remote.send(epoch_record("rc", epoch, epoch / 10))
        plain.send(epoch_record("rc", 4, 0.4))
        stranger.send(epoch_record("rc", 5, 0.5))
        assert remote.flush(20.0), f"{remote.pending} never acknowledged over CURVE"
        assert not plain.flush(2.0) and not stranger.flush(1.0)  # never acknowledged: never received
        control.request(ControlRequest(op="stop"), timeout_ms=10_000)
        assert proc.wait(15) == 0
    finally:
        for sender in (remote, plain, stranger):
            sender.close(0)
        control.close()
        if proc.poll() is None:
            proc.kill()
        ctx.term()
    with duckdb.connect(str(cfg.db_path), read_only=True) as con:
        assert con.execute("SELECT epoch FROM epochs ORDER BY epoch").fetchall() == [(1,), (2,), (3,)]
        refused = con.execute("SELECT data FROM events WHERE event = 'cluster_peer_refused'").fetchall()
    reasons = {json.loads(data)["reason"].split(":")[0] for (data,) in refused}
    # the stranger fails authentication; libzmq reports the plaintext peer's failed greeting as either event,
    # depending on where the exchange stopped (CI, 2026-12-07, under load: the protocol one)
    assert "authentication" in reasons, reasons
    assert reasons & {"handshake failed", "protocol error in the handshake"}, reasons


def test_a_cluster_endpoint_without_keys_is_refused_before_anything_binds(tmp_path):
    with pytest.raises(ValidationError, match="needs CURVE keys: a plaintext socket on a network address is refused"):
        RecorderConfig(db_path=tmp_path / "c.duckdb", endpoint=free_tcp_endpoint(), control_endpoint=free_tcp_endpoint(),
                       run_dir=tmp_path, cluster_endpoint=cluster_endpoint())  # fmt: skip
    with pytest.raises(ValidationError, match="must be tcp://HOST:PORT"):
        RecorderConfig(db_path=tmp_path / "c.duckdb", endpoint=free_tcp_endpoint(), control_endpoint=free_tcp_endpoint(),
                       run_dir=tmp_path, cluster_endpoint="ipc:///tmp/x", cluster_keys=new_cluster_keys()[0])  # fmt: skip
