"""The SQL views pool only runs of one protocol and count a seed once (issue 19): a 6-epoch run and two 3-epoch
runs of seed 0 are two rows of one seed each, not "3 seeds"; runs recorded before the protocol all count."""

from __future__ import annotations

import json



def add_run(con, run_id, epochs, finished, experiment=True, arm="baseline", controller="none", values=(0.5,)):
    what = {"task": "mnist", "regime": "100", "seed": 0, "epochs": epochs, "arm": arm, "controller": controller}
    config = {"fingerprint": run_id, "experiment": what} if experiment else {}
    con.execute(
        "INSERT INTO runs (run_id, pair_id, arm, regime, n_train, controller, seed, epochs, status, started_at, "
        "finished_at, config, task, objective, mode) VALUES (?, 'p', ?, '100', 100, ?, 0, ?, 'completed', "
        "TIMESTAMP '2026-01-01', TIMESTAMP '2026-01-01' + to_seconds(?), ?, 'mnist', 'val_acc', 'max')",
        [run_id, arm, controller, epochs, finished, json.dumps(config)],
    )
    for epoch, value in enumerate(values, 1):
        con.execute("INSERT INTO epochs (run_id, epoch, val_acc, objective) VALUES (?, ?, ?, ?)",
                    [run_id, epoch, value, value])  # fmt: skip


def test_runs_of_other_epochs_are_other_rows_and_a_seed_counts_once(con):
    add_run(con, "six", 6, 1, values=(0.6,))
    add_run(con, "three-a", 3, 2, values=(0.3,))
    add_run(con, "three-b", 3, 3, values=(0.35,))  # the same protocol and seed, finished later: it counts
    rows = con.execute("SELECT n_seeds, final_objective, protocol FROM task_table ORDER BY final_objective").fetchall()
    assert [(n, v) for n, v, _ in rows] == [(1, 0.35), (1, 0.6)]
    assert all(json.loads(p)["epochs"] in (3, 6) and "seed" not in json.loads(p) for _, _, p in rows)
    counted = con.execute("SELECT run_id FROM run_results WHERE counted ORDER BY run_id").fetchall()
    assert counted == [("six",), ("three-b",)]
    assert con.execute("SELECT count(*), sum(n_seeds) FROM paper_table").fetchall() == [(2, 2)]


def test_runs_recorded_before_the_protocol_all_count_as_before(con):
    add_run(con, "old-a", 3, 1, experiment=False)
    add_run(con, "old-b", 3, 2, experiment=False)
    assert con.execute("SELECT n_seeds, protocol FROM task_table").fetchall() == [(2, None)]
