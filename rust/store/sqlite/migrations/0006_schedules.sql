-- Periodic tasks: one row per schedule a worker declared. `last_tick` (ms, UTC) is the
-- newest tick enqueued; a tick is enqueued in the same transaction that raises it, so
-- however many workers run a schedule, each tick is enqueued at most once, even after its
-- task finished (freeing its unique key) or was pruned.
CREATE TABLE schedules (
    queue        TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    task         TEXT    NOT NULL,
    cron         TEXT    NOT NULL,
    tz           TEXT    NOT NULL,
    missed       TEXT    NOT NULL,
    -- When this definition (cron, tz) was first declared: its first tick comes after it.
    declared_at  INTEGER NOT NULL,
    last_tick    INTEGER,
    last_task_id INTEGER,
    seen_at      INTEGER NOT NULL,
    PRIMARY KEY (queue, name)
) WITHOUT ROWID;
