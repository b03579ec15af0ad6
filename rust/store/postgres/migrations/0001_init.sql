-- ferroq PostgreSQL schema 1. Times are epoch milliseconds (the store's injected clock, as
-- in SQLite, so every host keeps to one timeline: see clock::SteadyClock); statuses are
-- lowercase names. Everything lives in the URL's schema (search_path).

-- The hot table: one row per task, rewritten on each transition. Payloads and results live
-- apart (written once), so a claim or a completion rewrites a short row whatever their size.
-- fillfactor leaves room on each page for the next version of its rows (HOT updates when no
-- indexed column changes: heartbeats, progress); autovacuum runs early and unthrottled,
-- since every task leaves dead versions behind it.
CREATE TABLE tasks (
    -- Identity: ids are never reused, so id order is enqueue order (FIFO) forever.
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue            TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    resource_group   TEXT    NOT NULL,
    priority         BIGINT  NOT NULL,
    run_at           BIGINT  NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'dead', 'cancelled')),
    attempts         BIGINT  NOT NULL DEFAULT 0,
    max_attempts     BIGINT  NOT NULL,
    lease_owner      TEXT,
    lease_token      BIGINT,
    lease_expires_at BIGINT,
    unique_key       TEXT,
    progress         DOUBLE PRECISION,
    progress_message TEXT,
    last_error       TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
) WITH (fillfactor = 85,
        autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_insert_scale_factor = 0.05,
        autovacuum_analyze_scale_factor = 0.02,
        autovacuum_vacuum_cost_delay = 0);

-- Few indexes, each partial: a transition writes an entry only into the indexes whose
-- condition the new row version meets.
-- The claim: ready tasks by priority, then FIFO. A pending task is either ready
-- (run_at <= updated_at) or delayed (run_at > updated_at), never both: the claim moves
-- delayed tasks that came due over by setting updated_at (as in the SQLite engine), so it
-- never walks past a million tasks scheduled for later.
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, id)
    WHERE status = 'pending' AND run_at <= updated_at;
CREATE INDEX tasks_due ON tasks (queue, run_at)
    WHERE status = 'pending' AND run_at > updated_at;
-- The rescuer and running counts.
CREATE INDEX tasks_leases ON tasks (queue, lease_expires_at) WHERE status = 'running';
-- Counts, listings and retention of finished tasks.
CREATE INDEX tasks_finished ON tasks (queue, status, finished_at)
    WHERE status IN ('completed', 'dead', 'cancelled');
-- At most one unfinished task per unique key.
CREATE UNIQUE INDEX tasks_unique_key ON tasks (queue, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'running');

CREATE TABLE task_payloads (
    task_id BIGINT PRIMARY KEY,
    payload BYTEA  NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

CREATE TABLE task_results (
    task_id    BIGINT PRIMARY KEY,
    result     BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

-- Runs that ended other than completed, and operator actions (a completed run is derived
-- from the task's row: see admin::history).
CREATE TABLE task_history (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id     BIGINT NOT NULL,
    from_status TEXT,
    to_status   TEXT   NOT NULL,
    at          BIGINT NOT NULL,
    worker      TEXT,
    error       TEXT
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
CREATE INDEX task_history_task ON task_history (task_id, id);

CREATE TABLE events (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             BIGINT NOT NULL,
    queue          TEXT   NOT NULL,
    resource_group TEXT,
    task_id        BIGINT,
    kind           TEXT   NOT NULL,
    detail         TEXT
);
CREATE INDEX events_by_group ON events (queue, resource_group, id) WHERE task_id IS NULL;
CREATE INDEX events_at ON events (at);

CREATE TABLE metrics (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bucket_start   BIGINT NOT NULL,
    bucket_ms      BIGINT NOT NULL,
    queue          TEXT   NOT NULL,
    resource_group TEXT   NOT NULL,
    name           TEXT   NOT NULL,
    value          DOUBLE PRECISION NOT NULL,
    histogram      BYTEA
);
CREATE UNIQUE INDEX metrics_key ON metrics (queue, name, bucket_ms, bucket_start, resource_group);

CREATE TABLE queues (
    queue      TEXT    PRIMARY KEY,
    paused     BOOLEAN NOT NULL DEFAULT false,
    updated_at BIGINT  NOT NULL
);

-- A row only for a group with settings or a pause (see the SQLite engine's migration 2).
CREATE TABLE resource_groups (
    queue             TEXT    NOT NULL,
    resource_group    TEXT    NOT NULL,
    paused            BOOLEAN NOT NULL DEFAULT false,
    rate              DOUBLE PRECISION,
    burst             DOUBLE PRECISION,
    tokens            DOUBLE PRECISION,
    tokens_at         BIGINT,
    max_concurrency   BIGINT,
    adaptive          BOOLEAN NOT NULL DEFAULT false,
    min_concurrency   BIGINT,
    target_latency_ms BIGINT,
    error_rate        DOUBLE PRECISION,
    cooldown_ms       BIGINT,
    concurrency_limit DOUBLE PRECISION,
    last_cut_at       BIGINT,
    blocked_until     BIGINT,
    breaker_threshold BIGINT,
    breaker_window_ms BIGINT,
    breaker_open_ms   BIGINT,
    breaker_max_open_ms BIGINT,
    breaker_probes    BIGINT,
    updated_at        BIGINT  NOT NULL,
    PRIMARY KEY (queue, resource_group)
);

CREATE TABLE circuit_breaker_state (
    queue            TEXT   NOT NULL,
    resource_group   TEXT   NOT NULL,
    state            TEXT   NOT NULL DEFAULT 'closed'
        CHECK (state IN ('closed', 'open', 'half_open')),
    failures         BIGINT NOT NULL DEFAULT 0,
    window_start     BIGINT,
    opened_at        BIGINT,
    open_until       BIGINT,
    probes_in_flight BIGINT NOT NULL DEFAULT 0,
    recent_failures  TEXT   NOT NULL DEFAULT '[]',
    trips            BIGINT NOT NULL DEFAULT 0,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (queue, resource_group)
);

CREATE TABLE workers (
    id          TEXT   PRIMARY KEY,
    queue       TEXT   NOT NULL,
    hostname    TEXT   NOT NULL,
    pid         BIGINT NOT NULL,
    concurrency BIGINT NOT NULL,
    pool        TEXT   NOT NULL,
    started_at  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    stopped_at  BIGINT
);

CREATE TABLE schedules (
    queue        TEXT   NOT NULL,
    name         TEXT   NOT NULL,
    task         TEXT   NOT NULL,
    cron         TEXT   NOT NULL,
    tz           TEXT   NOT NULL,
    missed       TEXT   NOT NULL,
    declared_at  BIGINT NOT NULL,
    last_tick    BIGINT,
    last_task_id BIGINT,
    seen_at      BIGINT NOT NULL,
    PRIMARY KEY (queue, name)
);
