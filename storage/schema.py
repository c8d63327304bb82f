"""The DuckDB schema users query: tables, analysis views, and the migrations that build them.

The tables are a public interface (ARCHITECTURE.md): change them only by appending a migration to
``MIGRATIONS``. Views are recreated on every open, so they may change freely; :func:`migrate`
checkpoints right after, so that DDL never waits in the WAL. Timestamps are UTC.

Since migration 4 every run names its task, objective metric and direction (``runs.task``,
``objective``, ``mode``) and every epoch its metrics, knob values and vectors by name (JSON). The
views work for every task:

* ``run_results``: per run, ``final_objective``, ``best_objective`` (max or min by mode), ``best_epoch``,
  its ``reference``/``reference_objective`` (see :data:`REFERENCE_PREFIXES`), and the paper's MNIST
  columns ``final_val_acc``/``max_val_acc``/``final_train_acc`` (NULL for other tasks);
* ``paper_table``: the paper's table, MNIST runs only; ``task_table``: every task's objective, final and
  best, mean and std over seeds; ``task_references``: the references beside them;
* ``decision_outcomes``: each decision with the objective before and after it, ``improvement`` (positive
  is better), the knob values before it and those it set (and the MNIST columns lr/dropout/val_acc), the
  instruction in force and whether the decision followed it, whether it held, the expert form's choice;
* ``controller_reliability``: per task, controller and model: valid answers, repairs, fallbacks, latency,
  the hold rate, the instruction-following rate (decisions that had to act on an instruction), contradicted
  instructions, the model judge's agreement with the rule, and verdicts that contradicted the measurement.
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
    (
        4,
        """
        -- Task-agnostic records (bus schema v2): a run trains one task towards one objective metric with a
        -- direction; an epoch records its metrics, vectors and hyperparameters by name. The MNIST columns
        -- of migration 1 stay (a public interface): the recorder still fills them when the names exist
        -- (train_loss, train_acc, val_loss, val_acc, learning_rate -> lr, dropout, per_class_val_acc),
        -- else NULL. runs.n_train holds the run's budget: training examples, or environment steps per epoch.
        -- Every row written before is an MNIST row: the backfill says so. (DuckDB 2.0 adds columns to
        -- these tables with a PRIMARY KEY and updates their non-key columns in place, in this transaction;
        -- tests/storage/test_migration.py migrates a schema 3 file and checks every old view column.)
        ALTER TABLE runs ADD COLUMN task VARCHAR;           -- mnist | diabetes | cartpole | ...
        ALTER TABLE runs ADD COLUMN objective VARCHAR;      -- the metric that decides what is better
        ALTER TABLE runs ADD COLUMN mode VARCHAR;           -- max | min: the objective's direction
        UPDATE runs SET task = 'mnist', objective = 'val_acc', mode = 'max';
        ALTER TABLE epochs ADD COLUMN objective DOUBLE;     -- the run's objective metric this epoch
        ALTER TABLE epochs ADD COLUMN metrics JSON;         -- {name: value}, the objective among them
        ALTER TABLE epochs ADD COLUMN hyperparameters JSON; -- {knob: value used during this epoch}
        ALTER TABLE epochs ADD COLUMN vectors JSON;         -- {name: [values]}, e.g. per_class_val_acc
        -- (json_merge_patch onto {} drops the keys whose value is NULL, as the recorder never writes them)
        UPDATE epochs SET
            objective = val_acc,
            metrics = json_merge_patch('{}', json_object('train_loss', train_loss, 'train_acc', train_acc,
                                                         'val_loss', val_loss, 'val_acc', val_acc)),
            hyperparameters = json_merge_patch('{}', json_object('dropout', dropout, 'learning_rate', lr)),
            vectors = json_merge_patch('{}', json_object('per_class_val_acc', per_class_val_acc));
        ALTER TABLE reflections ADD COLUMN objective VARCHAR;        -- the metric judged
        ALTER TABLE reflections ADD COLUMN objective_before DOUBLE;  -- after the epoch the decision followed
        ALTER TABLE reflections ADD COLUMN objective_after DOUBLE;   -- after the epoch it governed
        UPDATE reflections SET objective = 'val_acc', objective_before = prev_val_acc, objective_after = val_acc;
        """,
    ),
    (
        5,
        """
        -- The user's instructions to the agent (issue 10): one row per instruction given to a run, with
        -- the epoch of the first decision it shaped (NULL until one did); each decision names its own.
        CREATE TABLE instructions (
            instruction_id VARCHAR PRIMARY KEY,
            run_id VARCHAR NOT NULL,
            text VARCHAR NOT NULL,
            source VARCHAR NOT NULL,           -- flag | file | schedule | say
            received_at TIMESTAMP NOT NULL,
            first_epoch INTEGER                -- the decision after this epoch was the first it shaped
        );
        ALTER TABLE decisions ADD COLUMN instruction_id VARCHAR;
        """,
    ),
    (
        6,
        """
        ALTER TABLE decisions ADD COLUMN instruction_outcome VARCHAR;  -- followed | ignored | contradicted | respected
        ALTER TABLE decisions ADD COLUMN held BOOLEAN;                 -- the command changed nothing
        ALTER TABLE decisions ADD COLUMN choice VARCHAR;               -- the expert form's chosen candidate
        ALTER TABLE decisions ADD COLUMN choice_margin DOUBLE;         -- its calibrated score over the runner-up's
        ALTER TABLE reflections ADD COLUMN model_verdict VARCHAR;      -- a model's verdict that contradicted the rule
        ALTER TABLE reflections ADD COLUMN contradicts_measurement BOOLEAN;
        """,
    ),
    (
        7,
        """
        -- Every instruction given is a row (issue 18): one replaced before any decision read it says by what, when.
        ALTER TABLE instructions ADD COLUMN superseded_by VARCHAR;     -- the instruction_id that replaced it
        ALTER TABLE instructions ADD COLUMN superseded_at TIMESTAMP;   -- when that one arrived
        """,
    ),
    (
        8,
        """
        -- Every instruction keeps how it was read when given (issue 18); NULL where it was not read (before this).
        ALTER TABLE instructions ADD COLUMN read_as VARCHAR;     -- 'read as: ...' | 'not understood: ...'
        ALTER TABLE instructions ADD COLUMN intent VARCHAR;      -- 'explicit: learning_rate down' | 'goal: speed' | 'hold'
        ALTER TABLE instructions ADD COLUMN moves JSON;          -- [{knob, direction, factor, target, ...}]
        ALTER TABLE instructions ADD COLUMN confidence DOUBLE;   -- the reader's, in [0, 1]
        ALTER TABLE instructions ADD COLUMN reader VARCHAR;      -- which reader produced it
        -- A move against a confident reading is not applied (agents.nodes.guard): instruction_outcome 'overridden',
        -- and what the policy proposed is kept here {hyperparameters, alpha, weight_ops, weight_modulation_layers}.
        ALTER TABLE decisions ADD COLUMN overridden_proposal JSON;
        """,
    ),
    (
        9,
        """
        -- A command may return to the best epoch so far (issue 19): the epoch whose checkpoint the trainer restored.
        ALTER TABLE decisions ADD COLUMN rollback_to INTEGER;   -- NULL: no rollback
        """,
    ),
    (
        10,
        """
        -- What each decision cost (issue 19); NULL where unknown (before this, or a trainer's fallback for the model).
        ALTER TABLE decisions ADD COLUMN llm_calls INTEGER;   -- model calls it made (agents/usage.py)
        ALTER TABLE decisions ADD COLUMN wait_ms DOUBLE;      -- the trainer's wait: request sent to answer or fallback
        ALTER TABLE decisions ADD COLUMN cost_usd DOUBLE;     -- its tokens at the user's --llm-price, USD
        """,
    ),
    (
        11,
        """
        -- Decisions that do not stall training (issue 20, --decisions async): a decision asked for after epoch
        -- ``epoch`` is applied at a later epoch's boundary. Synchronous decisions are applied where they were asked.
        ALTER TABLE decisions ADD COLUMN applied_epoch INTEGER;   -- applied after this epoch; NULL: not applied
        UPDATE decisions SET applied_epoch = epoch WHERE applied;
        """,
    ),
]

# Reference values a task reports beside its model: a metric named ``<prefix>_<objective>`` with a prefix
# listed here (the diabetes task's ``ols_val_rmse``: ordinary least squares on the same split) is a
# reference, shown as a line in the figures and a row in the tables, never as a run. A task with another
# kind of reference reports ``ref_<objective>``. The first prefix found in a run's metrics wins.
REFERENCE_PREFIXES: dict[str, str] = {"ols": "least squares", "ref": "reference"}


def _reference_metric(prefix: str) -> str:
    """The run's reference value (at the last epoch that reported it) for one prefix, as SQL."""
    return f"arg_max(TRY_CAST(e.metrics->>('{prefix}_' || r.objective) AS DOUBLE), e.epoch)"


_REFERENCE_VALUE = "coalesce(" + ", ".join(_reference_metric(p) for p in REFERENCE_PREFIXES) + ")"
_REFERENCE_NAME = (
    "CASE " + " ".join(f"WHEN {_reference_metric(p)} IS NOT NULL THEN '{p}'" for p in REFERENCE_PREFIXES) + " END"
)
_REFERENCE_LABEL = "CASE reference " + " ".join(f"WHEN '{p}' THEN '{label}'" for p, label in REFERENCE_PREFIXES.items())
_REFERENCE_LABEL += " END"

VIEWS = f"""
-- One row per run with any epoch: the task's objective at the last epoch and at its best (by mode; NaN,
-- a diverged epoch, is never the best), the MNIST columns of the paper (NULL for other tasks), and the
-- reference the task reported beside the run, if any (see REFERENCE_PREFIXES in storage/schema.py).
CREATE OR REPLACE VIEW run_results AS
WITH per_run AS (
    SELECT r.run_id, r.pair_id, r.arm, r.regime, r.n_train, r.controller, r.seed, r.status,
           count(e.epoch) AS epochs_run,
           arg_max(e.val_acc, e.epoch) AS final_val_acc,
           max(e.val_acc) AS max_val_acc,
           arg_max(e.train_acc, e.epoch) AS final_train_acc,
           r.task, r.objective, r.mode,
           arg_max(e.objective, e.epoch) AS final_objective,
           CASE WHEN r.mode = 'min' THEN min(e.objective) FILTER (WHERE NOT isnan(e.objective))
                ELSE max(e.objective) FILTER (WHERE NOT isnan(e.objective)) END AS best_objective,
           CASE WHEN r.mode = 'min' THEN arg_min(e.epoch, (e.objective, e.epoch)) FILTER (WHERE NOT isnan(e.objective))
                ELSE arg_max(e.epoch, (e.objective, -e.epoch)) FILTER (WHERE NOT isnan(e.objective)) END AS best_epoch,
           {_REFERENCE_NAME} AS reference,
           {_REFERENCE_VALUE} AS reference_objective,
           -- the run's protocol: its experiment (runs.config->'experiment') without the seed; NULL before it existed
           CASE WHEN any_value(r.config->'experiment') IS NOT NULL AND any_value(r.config->>'experiment') <> 'null'
                THEN CAST(json_merge_patch(any_value(r.config->'experiment'), '{{"seed": null}}') AS VARCHAR) END
               AS protocol,
           coalesce(CAST(any_value(r.config->'experiment'->'start') AS VARCHAR), '{{}}') AS start,
           any_value(r.finished_at) AS finished_at
    FROM runs r JOIN epochs e USING (run_id)
    GROUP BY r.run_id, r.pair_id, r.arm, r.regime, r.n_train, r.controller, r.seed, r.status, r.task, r.objective, r.mode
)
-- counted: the completed run a table counts for its protocol and seed (the one that finished last); runs
-- recorded before the protocol existed all count, as they always did
SELECT *, status = 'completed' AND (protocol IS NULL OR row_number() OVER (
           PARTITION BY protocol, seed, status ORDER BY finished_at DESC NULLS LAST, run_id DESC) = 1) AS counted
FROM per_run;

-- The paper's table (section 3.1), averaged over seeds, completed MNIST runs only, a row per protocol (a seed once).
CREATE OR REPLACE VIEW paper_table AS
SELECT regime, n_train, arm, controller,
       count(*) AS n_seeds,
       avg(final_val_acc) AS final_val_acc, stddev_samp(final_val_acc) AS final_val_acc_std,
       avg(max_val_acc) AS max_val_acc, stddev_samp(max_val_acc) AS max_val_acc_std,
       avg(final_train_acc) AS train_acc, stddev_samp(final_train_acc) AS train_acc_std,
       protocol  -- a row per protocol: runs of other epochs, starts, instructions or models are never pooled
FROM run_results
WHERE counted AND task = 'mnist'
GROUP BY regime, n_train, arm, controller, protocol
ORDER BY n_train DESC, arm, controller, protocol;

-- Every task's table: its objective at the last epoch and at the best one, mean and sample std over
-- seeds, per regime (n_train: the budget), arm, controller and protocol (a seed once); completed runs only.
CREATE OR REPLACE VIEW task_table AS
SELECT task, regime, n_train, arm, controller, objective, mode,
       count(*) AS n_seeds,
       avg(final_objective) AS final_objective, stddev_samp(final_objective) AS final_objective_std,
       avg(best_objective) AS best_objective, stddev_samp(best_objective) AS best_objective_std,
       avg(best_epoch) AS mean_best_epoch,
       protocol, any_value(start) AS start
FROM run_results
WHERE counted
GROUP BY task, regime, n_train, arm, controller, objective, mode, protocol
ORDER BY task, n_train DESC, arm, controller, protocol;

-- The references beside the runs, per task and regime: mean and std over seeds of each completed run's
-- reference value (one per seed: the arms of a pair share their data and so their reference).
CREATE OR REPLACE VIEW task_references AS
SELECT task, regime, n_train, objective, mode, reference, {_REFERENCE_LABEL} AS label,
       count(*) AS n_seeds, avg(value) AS value, stddev_samp(value) AS value_std
FROM (
    SELECT task, regime, n_train, seed, objective, mode, reference, any_value(reference_objective) AS value
    FROM run_results
    WHERE status = 'completed' AND reference IS NOT NULL
    GROUP BY task, regime, n_train, seed, objective, mode, reference
)
GROUP BY task, regime, n_train, objective, mode, reference
ORDER BY task, n_train DESC, reference;

-- How reliable is each controller / model, per task: answers valid at the first try, repaired, fallen back;
-- how often it held; of the decisions judged against an instruction (followed, ignored or contradicted; a later
-- decision under a one-shot instruction counts only when it contradicted it), the share followed; contradicted
-- instructions and those the guard overrode; how often a model judge agreed with the rule's verdict, and verdicts contradicting
-- the measurement.
CREATE OR REPLACE VIEW controller_reliability AS
SELECT r.task, d.controller, r.llm_model,
       count(*) AS decisions,
       avg(d.valid::INT) AS valid_first_try_rate,
       avg((NOT d.valid AND NOT d.fallback)::INT) AS repaired_rate,
       avg(d.fallback::INT) AS fallback_rate,
       avg(d.repair_attempts) AS mean_repair_attempts,
       avg((d.clamped <> '{{}}')::INT) AS clamped_rate,
       median(d.latency_ms) AS median_latency_ms,
       quantile_cont(d.latency_ms, 0.95) AS p95_latency_ms,
       avg(d.prompt_tokens) AS mean_prompt_tokens,
       avg(d.completion_tokens) AS mean_completion_tokens,
       avg(d.held::INT) AS hold_rate,
       avg((d.instruction_outcome = 'followed')::INT) FILTER (WHERE d.instruction_outcome IN
           ('followed', 'ignored', 'contradicted')) AS instruction_followed_rate,
       count(*) FILTER (WHERE d.instruction_outcome = 'contradicted') AS instructions_contradicted,
       count(*) FILTER (WHERE d.instruction_outcome = 'overridden') AS instructions_overridden,
       avg((rf.verdict_by_model = rf.rule_verdict)::INT) FILTER (WHERE rf.judge <> 'rule') AS rule_agreement_rate,
       count(*) FILTER (WHERE rf.contradicts_measurement) AS verdicts_contradicting_measurement
FROM decisions d JOIN runs r USING (run_id)
LEFT JOIN (SELECT run_id, about_epoch, judge, rule_verdict, contradicts_measurement,
                  coalesce(model_verdict, verdict) AS verdict_by_model FROM reflections) rf
       ON rf.run_id = d.run_id AND rf.about_epoch = d.epoch
GROUP BY r.task, d.controller, r.llm_model;

-- Each decision with the change in the objective over the epoch it governed (improvement: signed so
-- that positive is better), the knob values before it and those it set, and the verdict on it.
-- A command recorded before schema 4 holds dropout and learning_rate at its top level; one after it,
-- under "hyperparameters": both read the same here.
CREATE OR REPLACE VIEW decision_outcomes AS
WITH d AS (
    SELECT *,
           coalesce(command->'hyperparameters',
                    json_merge_patch('{{}}', json_object('dropout', command->'dropout',
                                                         'learning_rate', command->'learning_rate'))) AS hp_after,
           coalesce(applied_epoch, epoch) AS boundary  -- where the command took over (async: later than asked)
    FROM decisions
)
SELECT d.run_id, d.epoch, d.controller, d.valid, d.repair_attempts, d.fallback, d.applied, d.applied_epoch,
       d.command, d.notes,
       e0.lr AS lr_before, TRY_CAST(d.hp_after->>'learning_rate' AS DOUBLE) AS lr_after,
       e0.dropout AS dropout_before, TRY_CAST(d.hp_after->>'dropout' AS DOUBLE) AS dropout_after,
       e0.val_acc AS val_acc_before, e1.val_acc AS val_acc_after,
       e1.val_acc - e0.val_acc AS val_acc_change,
       rf.verdict, rf.text AS reflection,
       r.task, r.objective, r.mode,
       e0.objective AS objective_before, e1.objective AS objective_after,
       e1.objective - e0.objective AS objective_change,
       CASE WHEN r.mode = 'min' THEN e0.objective - e1.objective ELSE e1.objective - e0.objective END AS improvement,
       e0.hyperparameters AS hyperparameters_before,
       d.hp_after AS hyperparameters_after,
       coalesce(list_bool_or(list_transform(json_keys(d.hp_after), lambda k:
           TRY_CAST(d.hp_after->>k AS DOUBLE) IS DISTINCT FROM TRY_CAST(e0.hyperparameters->>k AS DOUBLE))), false)
           AS hyperparameters_changed,
       d.instruction_id, i.text AS instruction, d.instruction_outcome, d.held, d.choice, d.choice_margin,
       i.read_as AS instruction_read_as, d.overridden_proposal
FROM d
JOIN epochs e0 ON e0.run_id = d.run_id AND e0.epoch = d.boundary
LEFT JOIN epochs e1 ON e1.run_id = d.run_id AND e1.epoch = d.boundary + 1
LEFT JOIN runs r ON r.run_id = d.run_id
LEFT JOIN reflections rf ON rf.run_id = d.run_id AND rf.about_epoch = d.epoch
LEFT JOIN instructions i ON i.instruction_id = d.instruction_id;

-- What each guided run's steering cost: its decisions, their model calls, tokens, the seconds the trainer waited
-- for them, and their cost in USD at the user's --llm-price (0 for the embedded model and for controllers without
-- a model). A run recorded before schema 10 has NULL calls, wait and cost.
CREATE OR REPLACE VIEW run_costs AS
SELECT run_id, count(*) AS decisions, sum(llm_calls) AS llm_calls,
       sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
       sum(wait_ms) / 1000.0 AS wait_s, sum(cost_usd) AS cost_usd
FROM decisions
GROUP BY run_id;
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
