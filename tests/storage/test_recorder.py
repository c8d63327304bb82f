"""The recorder against a real DuckDB file, in-process (RecordBuffer) and as its own process."""

import json
import subprocess
import sys
import time

import duckdb
import pytest
import zmq

from bus.messages import (
    ControlReply,
    ControlRequest,
    Decision,
    DecisionRecord,
    EpochRecord,
    LogEvent,
    Reflection,
    ReflectionRecord,
    RunFinished,
    RunStarted,
    UpdateCommand,
)
from bus.transport import RecordSender, RequestClient, free_tcp_endpoint
from storage.recorder import RecordBuffer, RecorderConfig, RecordRejected
from storage.schema import MIGRATIONS, migrate


def run_started(
    run_id="r1", arm="guided", seed=0, task="mnist", objective="val_acc", mode="max", regime="100", budget=100
):
    return RunStarted(
        run_id=run_id,
        pair_id="p1",
        arm=arm,
        task=task,
        objective=objective,
        mode=mode,
        regime=regime,
        budget=budget,
        controller="heuristic" if arm == "guided" else "none",
        seed=seed,
        epochs=3,
        started_at=time.time(),
        config={"epochs": 3},
    )


def epoch_record(run_id, epoch, val_acc, train_acc=0.9, lr=1e-3, dropout=0.2):
    """An MNIST epoch (objective val_acc)."""
    return EpochRecord(
        run_id=run_id,
        epoch=epoch,
        objective=val_acc,
        metrics={"train_loss": 0.1, "train_acc": train_acc, "val_loss": 0.2, "val_acc": val_acc},
        vectors={"per_class_val_acc": [val_acc] * 10},
        hyperparameters={"dropout": dropout, "learning_rate": lr},
        alpha=0.4,
        wall_s=1.0,
        grad_norms={"fc.3.weight": 0.5},
        weight_norms={"fc.3.weight": 3.0},
    )


def regression_record(run_id, epoch, val_rmse, lr=1e-3, weight_decay=1e-4, ols=55.0):
    """A diabetes-like epoch: objective val_rmse (mode min), no MNIST metric, a least-squares reference."""
    return EpochRecord(
        run_id=run_id,
        epoch=epoch,
        objective=val_rmse,
        metrics={"train_loss": 3000.0, "val_rmse": val_rmse, "val_r2": 0.4, "ols_val_rmse": ols, "ols_val_r2": 0.45},
        hyperparameters={"learning_rate": lr, "weight_decay": weight_decay},
        alpha=0.5,
        wall_s=0.1,
        grad_norms={"net.0.weight": 0.5},
        weight_norms={"net.0.weight": 3.0},
    )


def decision_record(run_id, epoch, lr, dropout=0.2, **knobs):
    hyperparameters = {"learning_rate": lr, **({"dropout": dropout} if dropout is not None else {}), **knobs}
    command = UpdateCommand(hyperparameters=hyperparameters, alpha=0.4, rationale="x")
    return DecisionRecord(
        decision=Decision(run_id=run_id, epoch=epoch, controller="heuristic", command=command), applied=True
    )


def reflection_record(run_id, epoch, before, after, verdict="beneficial", objective="val_acc"):
    return ReflectionRecord(
        run_id=run_id,
        reflection=Reflection(
            epoch=epoch, about_epoch=epoch - 1, objective=objective, objective_before=before, objective_after=after,
            verdict=verdict, text="up",
        ),
    )  # fmt: skip


def test_records_become_rows_once_and_views_compute_the_paper_table(con):
    buffer = RecordBuffer(con)
    for seed, accs in ((0, [0.5, 0.7, 0.6]), (1, [0.4, 0.8, 0.75])):
        run_id = f"r{seed}"
        buffer.add(run_started(run_id, seed=seed))
        for epoch, acc in enumerate(accs, 1):
            buffer.add(epoch_record(run_id, epoch, acc))
            buffer.add(epoch_record(run_id, epoch, acc))  # delivered twice, stored once
        buffer.add(RunFinished(run_id=run_id, status="completed", finished_at=time.time()))
    buffer.add(decision_record("r0", 1, 5e-4))
    buffer.add(reflection_record("r0", 2, 0.5, 0.7))
    buffer.flush()
    assert buffer.written == 18  # messages handled, duplicates included
    assert con.execute("SELECT count(*) FROM epochs").fetchall() == [(6,)]
    assert con.execute("SELECT status FROM runs ORDER BY run_id").fetchall() == [("completed",), ("completed",)]
    row = con.execute("SELECT n_seeds, final_val_acc, max_val_acc, train_acc FROM paper_table").fetchall()[0]
    assert (
        row[0] == 2
        and row[1] == pytest.approx(0.675)
        and row[2] == pytest.approx(0.75)
        and row[3] == pytest.approx(0.9)
    )
    outcome = con.execute(
        "SELECT lr_before, lr_after, dropout_after, val_acc_change, verdict, objective, improvement, "
        "hyperparameters_changed FROM decision_outcomes"
    ).fetchall()
    assert outcome == [(1e-3, 5e-4, 0.2, pytest.approx(0.2), "beneficial", "val_acc", pytest.approx(0.2), True)]
    # v2 records fill the task-agnostic columns and, where the names exist, the MNIST ones
    epoch = con.execute(
        "SELECT objective, metrics->>'train_acc', hyperparameters->>'learning_rate', lr, dropout, train_loss, "
        "per_class_val_acc[1], json_array_length(vectors->'per_class_val_acc') FROM epochs "
        "WHERE run_id = 'r1' AND epoch = 2"
    ).fetchall()
    assert epoch == [(0.8, "0.9", "0.001", 1e-3, 0.2, 0.1, 0.8, 10)]
    run = con.execute("SELECT task, objective, mode, n_train FROM runs WHERE run_id = 'r0'").fetchall()
    assert run == [("mnist", "val_acc", "max", 100)]
    reflection = con.execute(
        "SELECT objective, objective_before, objective_after, prev_val_acc, val_acc FROM reflections"
    ).fetchall()
    assert reflection == [("val_acc", 0.5, 0.7, 0.5, 0.7)]
    final = con.execute("SELECT run_id, final_objective, best_objective, best_epoch FROM run_results ORDER BY run_id")
    assert final.fetchall() == [("r0", 0.6, 0.7, 2), ("r1", 0.75, 0.8, 2)]


def test_migration_is_idempotent_and_versioned(con):
    assert migrate(con) == MIGRATIONS[-1][0]
    assert con.execute("SELECT count(*) FROM schema_version").fetchall() == [(len(MIGRATIONS),)]


def test_records_of_an_unknown_run_are_rejected_and_watermarks_commit_with_the_rows(con):
    buffer = RecordBuffer(con)
    with pytest.raises(RecordRejected, match="unknown run 'ghost'"):
        buffer.add(epoch_record("ghost", 1, 0.5))
    assert buffer.accept("s1", 1) == "new"
    buffer.add(run_started("r1"))
    assert buffer.accept("s1", 3) == "gap" and buffer.accept("s1", 2) == "new"
    buffer.add(epoch_record("r1", 1, 0.5))
    assert buffer.accept("s1", 2) == "duplicate"
    assert buffer.flush() == {"s1": 2}
    assert con.execute("SELECT sender, seq FROM delivery").fetchall() == [("s1", 2)]
    again = RecordBuffer(con)  # a restarted recorder knows what it committed, and the run
    assert again.accept("s1", 2) == "duplicate" and again.accept("s1", 3) == "new"
    again.add(epoch_record("r1", 2, 0.6))
    again.flush()
    assert con.execute("SELECT epoch FROM epochs ORDER BY epoch").fetchall() == [(1,), (2,)]


def test_recorder_process_stores_records_drops_garbage_and_stops_cleanly(tmp_path):
    cfg = RecorderConfig(
        db_path=tmp_path / "rec.duckdb",
        endpoint=free_tcp_endpoint(),
        control_endpoint=free_tcp_endpoint(),
        run_dir=tmp_path,
    )
    (tmp_path / "recorder.json").write_text(cfg.model_dump_json())
    proc = subprocess.Popen([sys.executable, "-m", "storage", "--config", str(tmp_path / "recorder.json")])
    ctx = zmq.Context()
    try:
        control = RequestClient(ctx, cfg.control_endpoint, timeout_ms=1000, retries=0)
        deadline = time.monotonic() + 30
        while not isinstance(control.request(ControlRequest(op="ping")).reply, ControlReply):
            assert time.monotonic() < deadline and proc.poll() is None
        sender = RecordSender(ctx, cfg.endpoint)
        sender.send(run_started("rp"))
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 1000)
        raw.connect(cfg.endpoint)
        raw.send_multipart([b"1", b"epoch_record", b"{garbage"])
        raw.send_multipart([b"\x00\x01"])
        raw.close()
        for epoch in (1, 2):
            sender.send(epoch_record("rp", epoch, 0.5 + epoch / 10))
        sender.send(LogEvent(ts=time.time(), run_id="rp", component="test", pid=1, level="info", event="hello"))
        sender.send(LogEvent(ts=1e20, run_id="rp", component="test", pid=1, level="info", event="from the future"))
        sender.close()
        reply = control.request(ControlRequest(op="stop"), timeout_ms=10_000).reply
        control.close()
        assert reply.ok and reply.op == "stop"
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        ctx.term()
    with duckdb.connect(str(cfg.db_path), read_only=True) as con:
        assert con.execute("SELECT epoch, val_acc FROM epochs ORDER BY epoch").fetchall() == [(1, 0.6), (2, 0.7)]
        bad = con.execute("SELECT data FROM events WHERE event = 'bad_frame' ORDER BY ts").fetchall()
        reasons = [json.loads(d)["reason"] for (d,) in bad]
        assert any("not JSON" in r for r in reasons) and any("expected [seq, topic, json]" in r for r in reasons)
        assert con.execute("SELECT count(*) FROM events WHERE event = 'hello'").fetchall() == [(1,)]
        poison = con.execute("SELECT data FROM events WHERE event = 'record_rejected'").fetchall()
        assert len(poison) == 1 and "Overflow" in json.loads(poison[0][0])["reason"]  # dropped, recorder alive


def start_recorder(cfg: RecorderConfig, path) -> subprocess.Popen:
    path.write_text(cfg.model_dump_json())
    return subprocess.Popen([sys.executable, "-m", "storage", "--config", str(path)])


def wait_ping(control: RequestClient, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not isinstance(control.request(ControlRequest(op="ping")).reply, ControlReply):
        assert time.monotonic() < deadline and proc.poll() is None


def test_a_recorder_killed_mid_stream_and_restarted_stores_every_record_exactly_once(tmp_path):
    cfg = RecorderConfig(
        db_path=tmp_path / "k.duckdb", endpoint=free_tcp_endpoint(), control_endpoint=free_tcp_endpoint(),
        run_dir=tmp_path, flush_interval_s=0.05,
    )  # fmt: skip
    proc = start_recorder(cfg, tmp_path / "recorder.json")
    ctx = zmq.Context()
    control = RequestClient(ctx, cfg.control_endpoint, timeout_ms=1000, retries=0)
    sender = RecordSender(ctx, cfg.endpoint, resend_after_s=0.5)
    try:
        wait_ping(control, proc)
        sender.send(run_started("rk"))
        events = 0
        for epoch in range(1, 201):
            sender.send(epoch_record("rk", epoch, epoch / 1000))
            sender.send(LogEvent(ts=time.time(), run_id="rk", component="test", pid=1, level="info",
                                 event="tick", data={"epoch": epoch}))  # fmt: skip
            events += 1
            if epoch in (60, 140):  # some records committed, some in the recorder's memory, some in flight
                proc.kill()
                proc.wait()
                proc = start_recorder(cfg, tmp_path / "recorder.json")
                wait_ping(control, proc)
        assert sender.flush(30.0), f"{sender.pending} never acknowledged"
        assert sender.resends >= 1
        control.request(ControlRequest(op="stop"), timeout_ms=10_000)
        assert proc.wait(15) == 0
    finally:
        sender.close(0)
        control.close()
        if proc.poll() is None:
            proc.kill()
        ctx.term()
    with duckdb.connect(str(cfg.db_path), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT epoch), min(epoch), max(epoch) FROM epochs").fetchall() == [
            (200, 200, 1, 200)
        ]
        ticks = con.execute("SELECT count(*), count(DISTINCT data->>'epoch') FROM events WHERE event = 'tick'")
        assert ticks.fetchall() == [(events, events)]  # no event lost, none stored twice
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(1,)]


def test_a_decisions_calls_wait_and_cost_are_stored_and_summed_per_run(con):
    buffer = RecordBuffer(con)
    buffer.add(run_started("r0", seed=0))
    for epoch, (calls, cost, wait) in enumerate([(3, 0.002, 1500.0), (1, 0.001, 500.0)], 1):
        buffer.add(epoch_record("r0", epoch, 0.5))
        record = decision_record("r0", epoch, 5e-4)
        decision = record.decision.model_copy(update={"llm_calls": calls, "cost_usd": cost, "prompt_tokens": 100,
                                                      "completion_tokens": 10})  # fmt: skip
        buffer.add(record.model_copy(update={"decision": decision, "wait_ms": wait}))
    buffer.flush()
    row = con.execute("SELECT llm_calls, wait_ms, cost_usd FROM decisions WHERE epoch = 1").fetchall()
    assert row == [(3, 1500.0, 0.002)]
    costs = con.execute("SELECT * FROM run_costs").fetchall()
    assert costs == [("r0", 2, 4, 200, 20, 2.0, pytest.approx(0.003))]
