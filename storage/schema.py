"""The DuckDB schema users query: tables, analysis views, and the migrations that build them.

The tables are a public interface (DESIGN.md): change them only by appending a migration to
``MIGRATIONS``. Views are recreated on every open, so they may change freely; :func:`migrate`
checkpoints right after, so that DDL never waits in the WAL. Timestamps are UTC.
"""

from __future__ import annotations

import duckdb

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,
            pair_id VARCHAR NOT NULL,
            arm VARCHAR NOT NULL,              -- baseline | guided
            regime VARCHAR NOT NULL,           -- full | 10pct | 1pct | 100 | 10
            n_train INTEGER NOT NULL,
            controller VARCHAR NOT NULL,       -- none | heuristic | ...
            llm_model VARCHAR,
            seed INTEGER NOT NULL,
            epochs INTEGER NOT NULL,           -- epochs requested
            status VARCHAR NOT NULL,           -- running | completed | failed | interrupted
            status_reason VARCHAR,
            started_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP,
            config JSON NOT NULL
        );
        CREATE TABLE epochs (
            run_id VARCHAR NOT NULL,
            epoch INTEGER NOT NULL,
            train_loss DOUBLE, train_acc DOUBLE,
            val_loss DOUBLE, val_acc DOUBLE,
            lr DOUBLE, dropout DOUBLE, alpha DOUBLE,   -- the values used during this epoch
            wall_s DOUBLE,
            per_class_val_acc DOUBLE[],
            grad_norms JSON, weight_norms JSON,
            PRIMARY KEY (run_id, epoch)
        );
        CREATE TABLE decisions (
            run_id VARCHAR NOT NULL,
            epoch INTEGER NOT NULL,            -- decided after this epoch, applied during the next
            controller VARCHAR NOT NULL,
            prompt VARCHAR, raw_output VARCHAR,
            command JSON NOT NULL,             -- as applied
            valid BOOLEAN NOT NULL,            -- valid at the first try
            repair_attempts INTEGER NOT NULL,
            fallback BOOLEAN NOT NULL,
            fallback_reason VARCHAR,
            clamped JSON, notes JSON,
            applied BOOLEAN NOT NULL,          -- false for the last epoch's decision
            latency_ms DOUBLE,
            prompt_tokens INTEGER, completion_tokens INTEGER,
            PRIMARY KEY (run_id, epoch)
        );
        CREATE TABLE reflections (
            run_id VARCHAR NOT NULL,
            epoch INTEGER NOT NULL,            -- when the judgement was made
            about_epoch INTEGER NOT NULL,      -- the decision judged
            prev_val_acc DOUBLE, val_acc DOUBLE,
            verdict VARCHAR NOT NULL,          -- beneficial | harmful | neutral
            text VARCHAR,
            judge VARCHAR,                     -- rule | model name
            PRIMARY KEY (run_id, epoch)
        );
        CREATE TABLE events (
            ts TIMESTAMP NOT NULL,
            run_id VARCHAR,
            component VARCHAR NOT NULL,        -- orchestrator | trainer | agent | recorder
            pid INTEGER NOT NULL,
            level VARCHAR NOT NULL,
            event VARCHAR NOT NULL,
            data JSON
        );
        """,
    ),
    (
        2,
        """
        -- the rule's verdict beside a model's, to measure how often they agree
        ALTER TABLE reflections ADD COLUMN rule_verdict VARCHAR;
        """,
    ),
    (
        3,
        """
        -- Delivery bookkeeping (not for analysis): the last message of each sender process that is
        -- committed here. It is written in the same transaction as the rows, so a message sent again
        -- after a recorder crash is recognised and stored once.
        CREATE TABLE delivery (
            sender VARCHAR PRIMARY KEY,        -- <pid>-<random>, one per sending process
            seq BIGINT NOT NULL,               -- highest committed message number
            updated_at TIMESTAMP NOT NULL
        );
        """,
    ),
]

VIEWS = """
CREATE OR REPLACE VIEW run_results AS
SELECT r.run_id, r.pair_id, r.arm, r.regime, r.n_train, r.controller, r.seed, r.status,
       count(e.epoch) AS epochs_run,
       arg_max(e.val_acc, e.epoch) AS final_val_acc,
       max(e.val_acc) AS max_val_acc,
       arg_max(e.train_acc, e.epoch) AS final_train_acc
FROM runs r JOIN epochs e USING (run_id)
GROUP BY ALL;

-- The paper's table (section 3.1), averaged over seeds, completed runs only.
CREATE OR REPLACE VIEW paper_table AS
SELECT regime, n_train, arm, controller,
       count(*) AS n_seeds,
       avg(final_val_acc) AS final_val_acc, stddev_samp(final_val_acc) AS final_val_acc_std,
       avg(max_val_acc) AS max_val_acc, stddev_samp(max_val_acc) AS max_val_acc_std,
       avg(final_train_acc) AS train_acc, stddev_samp(final_train_acc) AS train_acc_std
FROM run_results
WHERE status = 'completed'
GROUP BY regime, n_train, arm, controller
ORDER BY n_train DESC, arm, controller;

-- How reliable is each controller / model: answers valid at the first try, repaired, fallen back.
CREATE OR REPLACE VIEW controller_reliability AS
SELECT d.controller, r.llm_model,
       count(*) AS decisions,
       avg(d.valid::INT) AS valid_first_try_rate,
       avg((NOT d.valid AND NOT d.fallback)::INT) AS repaired_rate,
       avg(d.fallback::INT) AS fallback_rate,
       avg(d.repair_attempts) AS mean_repair_attempts,
       avg((d.clamped <> '{}')::INT) AS clamped_rate,
       median(d.latency_ms) AS median_latency_ms,
       quantile_cont(d.latency_ms, 0.95) AS p95_latency_ms,
       avg(d.prompt_tokens) AS mean_prompt_tokens,
       avg(d.completion_tokens) AS mean_completion_tokens
FROM decisions d JOIN runs r USING (run_id)
GROUP BY d.controller, r.llm_model;

-- Each decision with the validation change over the epoch it governed, and the verdict on it.
CREATE OR REPLACE VIEW decision_outcomes AS
SELECT d.run_id, d.epoch, d.controller, d.valid, d.repair_attempts, d.fallback, d.applied,
       d.command, d.notes,
       e0.lr AS lr_before, CAST(d.command->>'learning_rate' AS DOUBLE) AS lr_after,
       e0.dropout AS dropout_before, CAST(d.command->>'dropout' AS DOUBLE) AS dropout_after,
       e0.val_acc AS val_acc_before, e1.val_acc AS val_acc_after,
       e1.val_acc - e0.val_acc AS val_acc_change,
       rf.verdict, rf.text AS reflection
FROM decisions d
JOIN epochs e0 ON e0.run_id = d.run_id AND e0.epoch = d.epoch
LEFT JOIN epochs e1 ON e1.run_id = d.run_id AND e1.epoch = d.epoch + 1
LEFT JOIN reflections rf ON rf.run_id = d.run_id AND rf.about_epoch = d.epoch;
"""


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the database to the latest schema and checkpoint it; returns the version it is at.

    The checkpoint moves the migrations and the recreated views from the WAL into the file, so the WAL a
    crash leaves behind holds rows only, never DDL beside upserts (which DuckDB releases have failed to
    replay)."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]
    for version, ddl in MIGRATIONS:
        if version > current:
            con.execute("BEGIN TRANSACTION")
            con.execute(ddl)
            con.execute("INSERT INTO schema_version VALUES (?, now() AT TIME ZONE 'UTC')", [version])
            con.execute("COMMIT")
            current = version
    con.execute(VIEWS)
    con.execute("CHECKPOINT")
    return current
