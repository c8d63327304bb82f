"""run.py as a user runs it: real processes, real ZeroMQ, real DuckDB, real MNIST."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def run_py(*args: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def query(db: Path, sql: str, params=None):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_both_arms_with_the_critic_are_recorded_row_by_row(tmp_path):
    db, out = tmp_path / "r.duckdb", tmp_path / "runs"
    result = run_py(
        "--regime",
        "10",
        "--epochs",
        "5",
        "--controller",
        "random",  # moves dropout at every decision (the heuristic's gap rule waits for the accuracy to stall)
        "--nodes",
        "critic",
        "--db",
        str(db),
        "--out",
        str(out),
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "| 10 | 0 | baseline | none | completed | 5 |" in result.stdout
    assert "epoch   5/5" in result.stdout and "-> next dropout" in result.stdout

    runs = query(db, "SELECT arm, controller, status, n_train, seed, epochs, pair_id, config FROM runs ORDER BY arm")
    assert [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in runs] == [
        ("baseline", "none", "completed", 10, 0, 5),
        ("guided", "random", "completed", 10, 0, 5),
    ]
    assert runs[0][6] == runs[1][6]
    assert json.loads(runs[1][7])["agent"]["nodes"] == [
        "prompter",
        "controller",
        "validator",
        "repairer",
        "critic",
        "reflector",
    ]

    epochs = query(
        db,
        "SELECT r.arm, e.epoch, e.val_acc, e.train_acc, e.lr, e.dropout, len(e.per_class_val_acc) "
        "FROM epochs e JOIN runs r USING (run_id) ORDER BY r.arm, e.epoch",
    )
    assert [(a, e) for a, e, *_ in epochs] == [("baseline", i) for i in range(1, 6)] + [
        ("guided", i) for i in range(1, 6)
    ]
    assert all(0.0 <= v <= 1.0 and 0.0 <= t <= 1.0 and n == 10 for _, _, v, t, _, _, n in epochs)
    # Same seed, same subset, same init: identical until the agent's first change takes effect.
    baseline, guided = epochs[:5], epochs[5:]
    assert baseline[0][2:4] == guided[0][2:4]

    decisions = query(
        db, "SELECT epoch, valid, fallback, applied, raw_output, command, notes, prompt FROM decisions ORDER BY epoch"
    )
    assert [d[0] for d in decisions] == [1, 2, 3, 4, 5]
    assert all(d[1] and not d[2] for d in decisions)
    assert [d[3] for d in decisions] == [True, True, True, True, False]
    assert all("Epoch" in d[7] and "JSON" in d[7] for d in decisions)
    # Each applied command is exactly what the next epoch trained with.
    for (epoch, *_rest, command, _notes, _prompt), (_, next_epoch, _, _, lr, dropout, _) in zip(
        decisions[:4], guided[1:]
    ):
        applied = json.loads(command)["hyperparameters"]
        assert (applied["learning_rate"], applied["dropout"]) == pytest.approx((lr, dropout))
    # Each knob the critic softened or vetoed was applied at the critic's last value for it, not the one proposed.
    last_note = {
        (epoch, note["field"]): (note, json.loads(cmd)["hyperparameters"][note["field"]])
        for epoch, _, _, _, _, cmd, notes, _ in decisions
        for note in json.loads(notes)
        if note["node"] == "critic" and note["action"] in ("soften", "veto")
    }
    assert last_note, "the critic changed no decision"
    assert all(applied == pytest.approx(note["to"]) and note["to"] != pytest.approx(note["from"])
               for note, applied in last_note.values()), last_note  # fmt: skip

    reflections = query(db, "SELECT epoch, about_epoch, verdict FROM reflections ORDER BY epoch")
    assert [(e, a) for e, a, _ in reflections] == [(2, 1), (3, 2), (4, 3), (5, 4)]
    assert {v for *_, v in reflections} <= {"beneficial", "harmful", "neutral"}

    pids = query(db, "SELECT component, count(DISTINCT pid) FROM events GROUP BY component ORDER BY component")
    assert dict(pids) == {"agent": 1, "orchestrator": 1, "recorder": 1, "trainer": 2}
    assert query(db, "SELECT count(*) FROM paper_table") == [(2,)]
    assert len(list(out.glob("*/logs/*.jsonl"))) == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["--regime", "2pct"], "--regime: task 'mnist' has no regime '2pct' (choose from full=60000"),
        (["--task", "nosuch"], "--task: unknown task 'nosuch'; known: mnist, diabetes, cartpole"),
        (["--task", "diabetes", "--no-compile"], "task 'diabetes' takes no option(s) compile_eval"),
        (["--controller", "nosuch"], "--controller: unknown controller 'nosuch'"),
        (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
        (["--epochs", "many"], "argument --epochs: must be a whole number, got 'many'"),
        (["--nodes", "nosuch"], "--nodes: unknown node 'nosuch'"),
        (["--db", "/proc/reflectnet/x.duckdb"], "--db /proc/reflectnet/x.duckdb: cannot open for writing"),
    ],
)
def test_bad_input_gives_one_clear_line_and_exit_2(args, message, tmp_path):
    result = run_py(*args, "--out", str(tmp_path / "runs"), tmp_path=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"run.py: error: {message}" + result.stderr.strip().split(message, 1)[1]
    ]
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_help_states_every_default(tmp_path):
    result = run_py("--help", tmp_path=tmp_path, timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps help lines
    for default in (
        "(default: the task's, 1pct for mnist)",
        "(default: llm)",
        "(default: the task's, 30 for mnist)",
        "(default: 0)",
        "(default: the task's, 64 for mnist)",
        "(default: mnist)",
        "(default: runs/reflectnet.duckdb)",
    ):
        assert default in text


@pytest.mark.slow  # 159 s on 2 cores under load: out of the default suite for its 15 minutes; -m slow runs it
def test_a_sweep_records_every_combination_once_and_resumes(tmp_path):
    db, out = tmp_path / "s.duckdb", tmp_path / "runs"
    sweep = ["--regime", "10", "--controller", "none,plateau", "--epochs", "1", "--db", str(db), "--out", str(out)]
    first = run_py(*sweep, "--seeds", "2", tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "4 run(s), 0 already completed" in first.stdout and "[4/4]" in first.stdout
    runs = query(db, "SELECT seed, arm, controller, status, pair_id FROM runs ORDER BY seed, arm")
    assert [r[:4] for r in runs] == [
        (0, "baseline", "none", "completed"),
        (0, "guided", "plateau", "completed"),
        (1, "baseline", "none", "completed"),
        (1, "guided", "plateau", "completed"),
    ]
    assert runs[0][4] == runs[1][4] != runs[2][4] == runs[3][4]  # one pair per seed, sharing the subset
    again = run_py(*sweep, "--seeds", "2", tmp_path=tmp_path)
    assert again.returncode == 0 and "4 run(s), 4 already completed" in again.stdout and "[1/" not in again.stdout
    more = run_py(*sweep, "--seeds", "3", tmp_path=tmp_path)
    assert more.returncode == 0 and "6 run(s), 4 already completed" in more.stdout and "[2/2]" in more.stdout
    assert query(db, "SELECT count(*), count(DISTINCT config->>'fingerprint') FROM runs") == [(6, 6)]
    assert query(db, "SELECT controller, n_seeds FROM paper_table ORDER BY controller") == [("none", 3), ("plateau", 3)]
    # A controller added later joins the recorded pairs: same pair_id as that seed's baseline.
    added = run_py(*sweep[:2], "--controller", "heuristic", *sweep[4:], "--seeds", "2", "--arms", "guided",
                   tmp_path=tmp_path)  # fmt: skip
    assert added.returncode == 0, added.stderr
    joined = query(db, "SELECT h.seed FROM runs h JOIN runs b ON b.pair_id = h.pair_id AND b.arm = 'baseline' "
                       "WHERE h.controller = 'heuristic' ORDER BY h.seed")  # fmt: skip
    assert joined == [(0,), (1,)]


@pytest.mark.slow  # 89 s on 2 cores under load: out of the default suite for its 15 minutes; -m slow runs it
def test_replay_reapplies_the_recorded_commands_and_matches_the_original(tmp_path):
    db, out = tmp_path / "p.duckdb", tmp_path / "runs"
    # random: knobs, alpha and weight operations (seeded noise among them) change at every decision
    original = run_py("--regime", "10", "--epochs", "5", "--arms", "guided", "--controller", "random",
                      "--db", str(db), "--out", str(out), tmp_path=tmp_path)  # fmt: skip
    assert original.returncode == 0, original.stderr
    (run_id,) = query(db, "SELECT run_id FROM runs")[0]
    changes = query(db, "SELECT count(*) FROM decision_outcomes WHERE dropout_after <> dropout_before AND applied")
    assert changes[0][0] >= 1  # the replay has something to reproduce
    replay = run_py("--replay", run_id, "--db", str(db), "--out", str(out), tmp_path=tmp_path)
    assert replay.returncode == 0, replay.stderr
    assert f"of {run_id}: 5 epochs compared; max |delta| val_acc 0.00e+00" in replay.stdout
    (replay_id, controller, config) = query(
        db, "SELECT run_id, controller, config FROM runs WHERE run_id <> ?", [run_id]
    )[0]
    assert controller == "replay" and json.loads(config)["replay_of"] == run_id
    pairs = query(db, "SELECT a.epoch, a.val_acc, b.val_acc, a.train_loss, b.train_loss, a.dropout, b.dropout "
                      "FROM epochs a JOIN epochs b USING (epoch) WHERE a.run_id = ? AND b.run_id = ? ORDER BY epoch",
                  [run_id, replay_id])  # fmt: skip
    assert len(pairs) == 5
    for _, val_a, val_b, loss_a, loss_b, drop_a, drop_b in pairs:
        assert val_a == val_b and loss_a == pytest.approx(loss_b, abs=1e-6) and drop_a == drop_b
    assert query(db, "SELECT DISTINCT controller FROM decisions WHERE run_id = ?", [replay_id]) == [("replay",)]
    unknown = run_py("--replay", "no-such-run", "--db", str(db), tmp_path=tmp_path, timeout=60)
    assert unknown.returncode == 2 and "no run 'no-such-run'" in unknown.stderr


def test_a_database_held_by_another_process_gives_one_line_naming_the_file(tmp_path):
    db = tmp_path / "held.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "time.sleep(120)", str(db)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["--regime", "10", "--epochs", "1"], ["sql", "SELECT 1"], ["report"]):
            result = run_py(*args, "--db", str(db), tmp_path=tmp_path, timeout=60)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2 and len(lines) == 1, result.stderr
            assert str(db) in lines[0] and "Conflicting lock" in lines[0] and "Traceback" not in result.stderr
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow  # 41 s on 2 cores under load: out of the default suite for its 15 minutes; -m slow runs it
def test_resume_refuses_what_it_cannot_resume_in_one_line(tmp_path):
    db, out = tmp_path / "r.duckdb", tmp_path / "runs"
    done = run_py("--regime", "10", "--epochs", "1", "--arms", "baseline", "--db", str(db), "--out", str(out),
                  tmp_path=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (run_id,) = query(db, "SELECT run_id FROM runs")[0]
    for args, message in (
        (["--resume", "nope"], "--resume: no run 'nope'"),
        (["--resume", run_id], f"--resume: run '{run_id}' is already completed"),
        (["--resume", run_id, "--replay", run_id], "--resume and --replay cannot be combined"),
    ):
        result = run_py(*args, "--db", str(db), "--out", str(out), tmp_path=tmp_path, timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"run.py: error: {message}"), lines
    with duckdb.connect(str(db)) as con:  # a failed run whose checkpoint is gone
        con.execute("UPDATE runs SET status = 'failed'").fetchall()
    for path in out.glob("*/checkpoints/*.safetensors"):
        path.unlink()
    result = run_py("--resume", run_id, "--db", str(db), tmp_path=tmp_path, timeout=60)
    assert result.returncode == 2 and "cannot read checkpoint" in result.stderr
    assert "can only be run again from epoch 1" in result.stderr and len(result.stderr.strip().splitlines()) == 1
