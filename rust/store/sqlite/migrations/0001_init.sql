-- ferroq schema 1. Times are epoch milliseconds; statuses are lowercase names.

CREATE TABLE tasks (
    -- AUTOINCREMENT: ids are never reused, so id order is enqueue order (FIFO) forever.
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    resource_group   TEXT    NOT NULL,
    payload          BLOB    NOT NULL,
    priority         INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'dead', 'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_token      INTEGER,
    lease_expires_at INTEGER,
    unique_key       TEXT,
    progress         REAL,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER
);

-- The claim path: pending tasks by priority, then FIFO; run_at rides along so delayed
-- tasks are skipped inside the index, without visiting their rows.
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, id, run_at) WHERE status = 'pending';
-- The rescuer (and running counts): running tasks by lease expiry.
CREATE INDEX tasks_leases ON tasks (queue, lease_expires_at) WHERE status = 'running';
-- Delayed work (and pending counts): when the next pending task becomes due.
CREATE INDEX tasks_due ON tasks (queue, run_at) WHERE status = 'pending';
-- Counts, listings and retention of finished tasks. Partial, like the two above, so a
-- claim (pending -> running) touches no index it does not need: every index entry is a
-- B-tree write on the hot path.
CREATE INDEX tasks_finished ON tasks (queue, status, finished_at)
    WHERE status IN ('completed', 'dead', 'cancelled');
-- At most one unfinished task per unique key.
CREATE UNIQUE INDEX tasks_unique_key ON tasks (queue, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'running');

CREATE TABLE task_results (
    task_id    INTEGER PRIMARY KEY,
    result     BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE task_history (
    id          INTEGER PRIMARY KEY,
    task_id     INTEGER NOT NULL,
    from_status TEXT,
    to_status   TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    worker      TEXT,
    error       TEXT
);
CREATE INDEX task_history_task ON task_history (task_id, id);

-- Pruning a task takes its result and history with it.
CREATE TRIGGER tasks_pruned AFTER DELETE ON tasks BEGIN
    DELETE FROM task_results WHERE task_id = old.id;
    DELETE FROM task_history WHERE task_id = old.id;
END;

-- Filled by the metrics issue: one row per (interval, queue, group, metric).
CREATE TABLE metrics (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket_start   INTEGER NOT NULL,
    bucket_ms      INTEGER NOT NULL,
    queue          TEXT    NOT NULL,
    resource_group TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    value          REAL    NOT NULL,
    histogram      BLOB
);
CREATE INDEX metrics_time ON metrics (queue, name, bucket_start);

-- Filled by the stability issue: one breaker per (queue, group).
CREATE TABLE circuit_breaker_state (
    queue           TEXT    NOT NULL,
    resource_group  TEXT    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'closed'
        CHECK (state IN ('closed', 'open', 'half_open')),
    failures        INTEGER NOT NULL DEFAULT 0,
    window_start    INTEGER,
    opened_at       INTEGER,
    open_until      INTEGER,
    probes_in_flight INTEGER NOT NULL DEFAULT 0,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (queue, resource_group)
);
