"""Queries while a run is going (the live recorder answers) and a damaged WAL, through real processes."""

import json
import subprocess
import sys
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.messages import ControlRequest, QueryReply, QueryRequest, decode
from bus.transport import RecordSender, RequestClient, free_tcp_endpoint
from storage.database import EXIT_DATABASE_UNUSABLE, WalReplayError, open_database, wal_path
from bus.discovery import RecorderEndpoint, discovery_file, publish
from storage.live import QueryRefused, QueryService, answer_query, check_select, from_json_value
from storage.reader import ReaderError, open_reader
from storage.recorder import RecordBuffer, RecorderConfig
from storage.report import run_sql
from storage.schema import migrate
from tests.storage.test_recorder import epoch_record, run_started, start_recorder, wait_ping

REPO = Path(__file__).resolve().parents[2]


def run_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def test_only_one_select_statement_passes_the_check(con):
    for sql in ("SELECT 1", "FROM runs", "WITH x AS (SELECT 1) SELECT * FROM x", "DESCRIBE epochs", "VALUES (1)"):
        check_select(con, sql)
    refused = {
        "DROP TABLE runs": "SELECT statements only (a run is writing this database), got DROP",
        "INSERT INTO delivery VALUES ('x', 1, now())": "got INSERT",
        "COPY runs TO '/tmp/x.csv'": "got COPY",
        "PRAGMA table_info('runs')": "got PRAGMA",
        "ATTACH ':memory:' AS m": "got ATTACH",
        "SET threads = 1": "got SET",
        "SELECT 1; DROP TABLE runs": "one statement per query, got 2",
        "SELEC 1": "SQL error: Parser Error",
    }
    for sql, reason in refused.items():
        with pytest.raises(QueryRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
            check_select(con, sql)


def test_answers_restore_types_cap_rows_and_change_nothing(con):
    buffer = RecordBuffer(con)
    buffer.add(run_started("r1"))
    for epoch in range(1, 6):
        buffer.add(epoch_record("r1", epoch, epoch / 10))
    buffer.flush()
    cursor = con.cursor()
    sql = "SELECT epoch, val_acc, 'nan'::DOUBLE AS x FROM epochs WHERE epoch >= ? ORDER BY epoch"
    reply = answer_query(cursor, QueryRequest(sql=sql, params=[2], max_rows=3))
    assert reply.ok and reply.columns == ["epoch", "val_acc", "x"] and reply.types == ["INTEGER", "DOUBLE", "DOUBLE"]
    assert [row[:2] for row in reply.rows] == [[2, 0.2], [3, 0.3], [4, 0.4]] and reply.truncated
    sized = answer_query(cursor, QueryRequest(sql="SELECT repeat('x', 1000) FROM range(100)"), max_bytes=10_000)
    assert sized.ok and sized.truncated and len(sized.rows) == 9  # 9 rows of ~1 KB fit in 10 KB
    # A write hidden in a SELECT's transaction cannot survive: the transaction is rolled back.
    assert not answer_query(cursor, QueryRequest(sql="DELETE FROM epochs")).ok
    assert con.execute("SELECT count(*) FROM epochs").fetchall() == [(5,)]
    assert answer_query(cursor, QueryRequest(sql="SELECT count(*) FROM epochs")).rows == [[5]]  # cursor still usable


def test_list_struct_and_odd_columns_come_back_in_their_json_form_without_an_error(con):
    sql = (
        "SELECT [TIMESTAMP '2024-01-01 00:00:00'] AS ts_list, [1.5::DECIMAL(4,2)] AS dec_list, "
        "{'a': DATE '2024-01-02'} AS s, TIMESTAMP '2024-01-03 04:05:06' AS ts, 2.25::DECIMAL(4,2) AS d "
        "FROM range(2500)"
    )
    reply = answer_query(con.cursor(), QueryRequest(sql=sql, max_rows=2400))
    assert reply.ok and len(reply.rows) == 2400 and reply.truncated  # fetched in chunks, cut at max_rows
    row = [from_json_value(v, t) for v, t in zip(reply.rows[0], reply.types)]
    assert row[0] == ["2024-01-01T00:00:00"] and row[1] == ["1.50"] and row[2] == {"a": "2024-01-02"}
    assert row[3] == datetime(2024, 1, 3, 4, 5, 6) and row[4] == Decimal("2.25")
    assert from_json_value("not a date", "DATE") == "not a date"


def test_a_slow_query_is_interrupted_and_does_not_hold_up_commits(con):
    ctx = zmq.Context()
    events = []

    class Log:
        def warning(self, event, **fields):
            events.append((event, fields))

    service = QueryService(con, ctx, "tcp://127.0.0.1:*", Log(), timeout_s=1.5)
    client = ctx.socket(zmq.REQ)
    client.connect(service.endpoint)
    buffer = RecordBuffer(con)
    try:
        client.send_multipart([b"query", QueryRequest(sql="SELECT sum(hash(i)) FROM range(20000000000) t(i)")
                               .model_dump_json().encode()])  # fmt: skip
        while not service.socket.poll(100):
            pass
        service.receive()
        time.sleep(0.2)  # the worker is executing now
        started = time.perf_counter()
        buffer.add(run_started("during"))
        buffer.flush()  # the recorder's own commit, on the main connection, while the query runs
        commit_s = time.perf_counter() - started
        assert commit_s < 1.0  # blocked, it would wait >= 1.3 s for the interrupted query; slack for shared CPUs
        assert service.results.poll(10_000)
        service.deliver()
        assert client.poll(2000)
        reply = json.loads(client.recv_multipart()[1])
        assert reply["ok"] is False and reply["error"] == "the query ran longer than 1.5 s"
        client.send_multipart([b"query", QueryRequest(sql="SELECT sum(hash(i)) FROM range(20000000000) t(i)")
                               .model_dump_json().encode()])  # fmt: skip
        while not service.socket.poll(100):
            pass
        service.receive()
        time.sleep(0.2)
        service.close()  # the recorder stops mid-query: the client hears so at once
        assert client.poll(2000)
        reply = json.loads(client.recv_multipart()[1])
        assert reply["ok"] is False and reply["stopping"] is True and reply["error"] == "the recorder is stopping"
    finally:
        client.close(linger=0)
        if not service.socket.closed:
            service.close()
        ctx.term()
    assert con.execute("SELECT run_id FROM runs").fetchall() == [("during",)]


def stop(control: RequestClient, proc: subprocess.Popen) -> None:
    assert control.request(ControlRequest(op="stop"), timeout_ms=10_000).reply.ok
    assert proc.wait(15) == 0


def test_sql_and_report_during_a_run_are_answered_by_the_live_recorder(tmp_path):
    cfg = RecorderConfig(
        db_path=tmp_path / "live.duckdb", endpoint=free_tcp_endpoint(), control_endpoint=free_tcp_endpoint(),
        run_dir=tmp_path,
    )  # fmt: skip
    proc = start_recorder(cfg, tmp_path / "recorder.json")
    ctx = zmq.Context()
    control = RequestClient(ctx, cfg.control_endpoint, timeout_ms=1000, retries=0)
    sender = RecordSender(ctx, cfg.endpoint)
    try:
        wait_ping(control, proc)
        published = RecorderEndpoint.model_validate_json(discovery_file(RecorderEndpoint, cfg.db_path).read_text())
        assert published.pid == proc.pid and published.db_path == str(cfg.db_path)
        sender.send(run_started("r1"))
        for epoch in (1, 2, 3):
            sender.send(epoch_record("r1", epoch, epoch / 10))
        assert sender.flush(10)  # acknowledged = committed
        with pytest.raises(duckdb.IOException, match="Conflicting lock"):
            duckdb.connect(str(cfg.db_path), read_only=True)  # what DuckDB alone says during a run
        answer = run_sql(cfg.db_path, "SELECT run_id, epoch, val_acc, started_at FROM epochs JOIN runs USING (run_id) "
                                      "ORDER BY epoch")  # fmt: skip
        lines = answer.splitlines()
        assert lines[:2] == ["| run_id | epoch | val_acc | started_at |", "|---|---|---|---|"]
        assert [line.split(" | ")[1:3] for line in lines[2:5]] == [["1", "0.1"], ["2", "0.2"], ["3", "0.3"]]
        started_at = lines[2].split(" | ")[3].removesuffix(" |")
        assert str(datetime.fromisoformat(started_at)) == started_at  # a timestamp, printed as a direct read does
        assert lines[5] == f"(3 rows, from the live recorder, pid {proc.pid}, as of its last commit)"
        sender.send(epoch_record("r1", 4, 0.4))
        assert sender.flush(10)
        assert run_sql(cfg.db_path, "SELECT max(epoch) AS e FROM epochs").splitlines()[2] == "| 4 |"

        cli = run_py("sql", "SELECT count(*) AS n FROM epochs", "--db", str(cfg.db_path))
        assert cli.returncode == 0 and cli.stdout.splitlines()[2] == "| 4 |", cli.stderr
        refused = run_py("sql", "DELETE FROM epochs", "--db", str(cfg.db_path))
        assert refused.returncode == 2 and refused.stderr.strip() == (
            "run.py sql: error: the live recorder answers SELECT statements only (a run is writing this database), "
            "got DELETE"
        )
        report = run_py("report", "--db", str(cfg.db_path), "--out", str(tmp_path / "report"))
        assert report.returncode == 0, report.stderr
        assert f"read from the live recorder (pid {proc.pid})" in report.stdout
        assert "| r1 | mnist | 100 | guided | heuristic | 0 | 4/3 | val_acc | 0.4000 | 0.4000 |" in report.stdout
        assert (tmp_path / "report" / "validation_accuracy.png").stat().st_size > 10_000
        with open_reader(cfg.db_path) as reader:
            assert reader.live and reader.query("SELECT count(*) FROM epochs").rows == [(4,)]
            stop(control, proc)  # the run ends while a report is reading: the rest comes from the file
            assert reader.query("SELECT count(*) FROM epochs WHERE epoch > ?", [1]).rows == [(3,)]
            assert not reader.live
    finally:
        sender.close(0)
        control.close()
        if proc.poll() is None:
            proc.kill()
        ctx.term()
    assert not discovery_file(RecorderEndpoint, cfg.db_path).exists()  # withdrawn at a clean exit
    with open_reader(cfg.db_path) as reader:  # after the run: the file itself, read-only
        assert not reader.live and reader.query("SELECT count(*) FROM epochs").rows == [(4,)]


def test_a_file_held_by_another_process_under_a_stale_endpoint_gives_one_line(tmp_path):
    db = tmp_path / "held.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
                                "time.sleep(120)"), str(db)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        assert holder.stdout.readline().strip() == "held"
        publish(RecorderEndpoint(pid=dead.pid, db_path=str(db.resolve()), query_endpoint="tcp://127.0.0.1:9",
                                          control_endpoint="tcp://127.0.0.1:9", started_at=time.time()))  # fmt: skip
        started = time.monotonic()
        with pytest.raises(ReaderError) as refused:
            run_sql(db, "SELECT 1")
        assert time.monotonic() - started < 10
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"cannot open {db}: IO Error")
        assert "Conflicting lock is held in " in message and f"(PID {holder.pid})" in message
        assert f"names recorder pid {dead.pid}, which is gone, so PID {holder.pid} is not a ReflectNet" in message
    finally:
        holder.kill()
        holder.wait()


def make_unreplayable_wal(db: Path) -> Path:
    """A database whose WAL holds committed rows (the writer was killed) and is then garbled."""
    writer = (
        "import os, sys, time\n"
        "from storage.recorder import RecordBuffer\n"
        "from storage.database import open_database\n"
        "from storage.schema import migrate\n"
        "from pathlib import Path\n"
        "from tests.storage.test_recorder import run_started, epoch_record\n"
        "con = open_database(Path(sys.argv[1]))\n"
        "migrate(con)\n"
        "buffer = RecordBuffer(con)\n"
        "buffer.add(run_started('w'))\n"
        "for epoch in range(1, 50):\n"
        "    buffer.add(epoch_record('w', epoch, 0.5))\n"
        "    buffer.flush()\n"
        "os._exit(0)  # like SIGKILL: no checkpoint, the rows stay in the WAL\n"
    )
    subprocess.run([sys.executable, "-c", writer, str(db)], cwd=REPO, check=True, timeout=60)
    wal = wal_path(db)
    data = bytearray(wal.read_bytes())
    assert len(data) > 2000
    for i in range(200, 1200):
        data[i] ^= 0x5A
    wal.write_bytes(bytes(data))
    return wal


def test_an_unreplayable_wal_stops_the_recorder_with_one_line_and_exit_code_65(tmp_path):
    db = tmp_path / "crashed.duckdb"
    wal = make_unreplayable_wal(db)
    with pytest.raises(WalReplayError, match=f"the write-ahead log {wal} cannot be replayed"):
        open_database(db)
    cfg = RecorderConfig(db_path=db, endpoint=free_tcp_endpoint(), control_endpoint=free_tcp_endpoint(),
                         run_dir=tmp_path)  # fmt: skip
    (tmp_path / "recorder.json").write_text(cfg.model_dump_json())
    started = time.monotonic()
    recorder = subprocess.run(
        [sys.executable, "-m", "storage", "--config", str(tmp_path / "recorder.json")],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert recorder.returncode == EXIT_DATABASE_UNUSABLE == 65
    lines = recorder.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"recorder: the write-ahead log {wal} cannot be replayed (Corrupt WAL")
    assert f"the database {db} stays unusable until that file is moved aside" in lines[0]
    assert time.monotonic() - started < 30 and not discovery_file(RecorderEndpoint, db).exists()
    for command in ("sql", "report"):
        result = run_py(command, *(["SELECT 1"] if command == "sql" else []), "--db", str(db))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and str(wal) in lines[0], result.stderr
    wal.rename(wal.with_name(wal.name + ".damaged"))  # what the message says to do: the file opens again
    with open_database(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchall() == [(0,)]  # the WAL's rows are gone with it


def test_migrations_leave_no_ddl_in_the_wal(tmp_path):
    db = tmp_path / "m.duckdb"
    with duckdb.connect(str(db)) as con:
        migrate(con)
        assert not wal_path(db).exists() or wal_path(db).stat().st_size == 0
        migrate(con)  # the views are recreated on every open, and checkpointed again
        assert not wal_path(db).exists() or wal_path(db).stat().st_size == 0


@pytest.fixture(scope="module")
def live_recorder_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzzq")
    cfg = RecorderConfig(db_path=tmp / "f.duckdb", endpoint=free_tcp_endpoint(), control_endpoint=free_tcp_endpoint(),
                         run_dir=tmp)  # fmt: skip
    proc = start_recorder(cfg, tmp / "recorder.json")
    ctx = zmq.Context()
    control = RequestClient(ctx, cfg.control_endpoint, timeout_ms=1000, retries=0)
    wait_ping(control, proc)
    yield {"cfg": cfg, "proc": proc, "ctx": ctx, "endpoint": RecorderEndpoint.model_validate_json(
        discovery_file(RecorderEndpoint, cfg.db_path).read_text()).query_endpoint}  # fmt: skip
    stop(control, proc)
    control.close()
    ctx.term()


@given(frames=st.one_of(
    st.lists(st.binary(max_size=64), min_size=1, max_size=4),
    st.tuples(st.sampled_from([b"query", b"control", b"nope"]),
              st.one_of(st.binary(max_size=100), st.text(max_size=60).map(
                  lambda sql: QueryRequest(sql=sql).model_dump_json().encode()))).map(list),
))  # fmt: skip
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_query_socket_answers_any_frames_with_rows_or_a_reason(live_recorder_process, frames):
    sock = live_recorder_process["ctx"].socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(live_recorder_process["endpoint"])
    try:
        sock.send_multipart(frames)
        assert sock.poll(10_000), "no answer: the recorder is stuck or dead"
        reply = decode(sock.recv_multipart())
    finally:
        sock.close()
    assert isinstance(reply, QueryReply) and reply.pid == live_recorder_process["proc"].pid
    assert reply.ok or reply.error  # a random text may be a valid SELECT ("1", say); otherwise a reason
    assert live_recorder_process["proc"].poll() is None


def test_a_reader_follows_a_recorder_that_was_killed_and_restarted(tmp_path):
    cfg = RecorderConfig(db_path=tmp_path / "k.duckdb", endpoint=free_tcp_endpoint(),
                         control_endpoint=free_tcp_endpoint(), run_dir=tmp_path)  # fmt: skip
    proc = start_recorder(cfg, tmp_path / "recorder.json")
    ctx = zmq.Context()
    control = RequestClient(ctx, cfg.control_endpoint, timeout_ms=1000, retries=0)
    sender = RecordSender(ctx, cfg.endpoint, resend_after_s=0.5)
    try:
        wait_ping(control, proc)
        sender.send(run_started("r1"))
        assert sender.flush(10)
        with open_reader(cfg.db_path) as reader:
            assert reader.live and reader.pid == proc.pid
            assert reader.query("SELECT count(*) FROM runs").rows == [(1,)]
            proc.kill()  # as the orchestrator sees it: the recorder died, restart it on the same endpoints
            proc.wait()
            proc = start_recorder(cfg, tmp_path / "recorder.json")
            wait_ping(control, proc)
            sender.send(epoch_record("r1", 1, 0.5))
            assert sender.flush(10)
            assert reader.query("SELECT count(*) FROM epochs").rows == [(1,)]
            assert reader.live and reader.pid == proc.pid
        stop(control, proc)
    finally:
        sender.close(0)
        control.close()
        if proc.poll() is None:
            proc.kill()
        ctx.term()
