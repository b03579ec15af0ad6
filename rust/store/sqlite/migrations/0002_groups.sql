-- ferroq schema 2: resource groups (pause, throttle, circuit breaker), paused queues, events,
-- workers, metrics keys, progress messages; leaner claim indexes.

-- The claim filters on the group inside the index (restricted groups are skipped without
-- reading their rows).
DROP INDEX tasks_ready;
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, id, run_at, resource_group)
    WHERE status = 'pending';

-- Only delayed tasks (a delay, a retry's backoff): a task due at once never enters this
-- index, so its claim writes one index entry fewer. next_run_at() reads it to sleep until
-- delayed work is due; tasks due now are found by the claim itself.
DROP INDEX tasks_due;
CREATE INDEX tasks_due ON tasks (queue, run_at) WHERE status = 'pending' AND run_at > created_at;

-- A row only for a group that has settings or was paused: the claim reads this table, and
-- a queue with no row here takes the unrestricted path.
CREATE TABLE resource_groups (
    queue             TEXT    NOT NULL,
    resource_group    TEXT    NOT NULL,
    paused            INTEGER NOT NULL DEFAULT 0,
    -- Throttle (NULL: none).
    rate              REAL,
    burst             REAL,
    tokens            REAL,
    tokens_at         INTEGER,
    max_concurrency   INTEGER,
    -- Adaptive mode: the current cap moves between min_concurrency and max_concurrency.
    adaptive          INTEGER NOT NULL DEFAULT 0,
    min_concurrency   INTEGER,
    target_latency_ms INTEGER,
    error_rate        REAL,
    cooldown_ms       INTEGER,
    concurrency_limit REAL,
    last_cut_at       INTEGER,
    -- A processor's Retry-After: nothing of the group starts before this.
    blocked_until     INTEGER,
    -- Circuit breaker settings (NULL: none); its state is in circuit_breaker_state.
    breaker_threshold INTEGER,
    breaker_window_ms INTEGER,
    breaker_open_ms   INTEGER,
    breaker_max_open_ms INTEGER,
    breaker_probes    INTEGER,
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (queue, resource_group)
) WITHOUT ROWID;

CREATE TABLE queues (
    queue      TEXT    PRIMARY KEY,
    paused     INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Counted failures still inside the window (JSON array of times) and openings since the
-- breaker last closed (sets the next open time).
ALTER TABLE circuit_breaker_state ADD COLUMN recent_failures TEXT NOT NULL DEFAULT '[]';
ALTER TABLE circuit_breaker_state ADD COLUMN trips INTEGER NOT NULL DEFAULT 0;

-- Lifecycle events of groups and queues (circuit transitions, throttle changes, pause),
-- in order; tailable from other processes by id.
CREATE TABLE events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             INTEGER NOT NULL,
    queue          TEXT    NOT NULL,
    resource_group TEXT,
    task_id        INTEGER,
    kind           TEXT    NOT NULL,
    detail         TEXT
);
-- A group's own events (its circuit's transitions...) without walking task events.
CREATE INDEX events_by_group ON events (queue, resource_group, id) WHERE task_id IS NULL;

-- What a processor said with its progress (ctx.progress(0.4, "resizing")).
ALTER TABLE tasks ADD COLUMN progress_message TEXT;

-- Worker processes, for health: each renews last_seen while it runs.
CREATE TABLE workers (
    id          TEXT    PRIMARY KEY,
    queue       TEXT    NOT NULL,
    hostname    TEXT    NOT NULL,
    pid         INTEGER NOT NULL,
    concurrency INTEGER NOT NULL,
    pool        TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    stopped_at  INTEGER
) WITHOUT ROWID;

-- One row per (queue, name, resolution, interval, group): every worker adds its interval
-- into the same row, so a reader sums over time only.
DROP INDEX metrics_time;
CREATE UNIQUE INDEX metrics_key ON metrics (queue, name, bucket_ms, bucket_start, resource_group);
