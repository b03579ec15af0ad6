-- Why: tasks_ready held every pending task, the delayed ones too (enqueued with a delay,
-- retries waiting out their backoff), and a claim walks it in priority and id order,
-- skipping each one not due yet: with 1,000,000 tasks scheduled for later, claiming 100
-- ready tasks took 54 ms instead of 0.8 (and a downstream outage piles up exactly such
-- retries). Now a pending task is in one of two indexes, never both: tasks_due while it
-- waits for its run_at, tasks_ready once it may run.
--
-- Which one needs no new column: every write that makes a task pending sets updated_at to
-- that moment and run_at to when it may run, so run_at > updated_at is "delayed". A claim
-- moves the tasks that came due into tasks_ready by setting their updated_at to the claim's
-- time (see claim::promote_due); rows already in files sort themselves out the same way.

-- Both keep updated_at in their keys: SQLite checks a query's `run_at <= updated_at` (the
-- index's own condition, which a query must repeat to use it) against the key when it can,
-- and counts and group lookups then read the index alone, never the table.
--
-- tasks_ready is also ordered by group first now: ordered by priority and id across groups,
-- a claim walked past every ready task of a group held back (paused, breaker open, out of
-- tokens, at its concurrency cap) to reach the other groups' tasks (100,000 held: 14 ms a
-- claim instead of 1.3). A claim now reads each group's best and merges them (ready.rs).
DROP INDEX tasks_ready;
CREATE INDEX tasks_ready ON tasks (queue, resource_group, priority DESC, id, run_at, updated_at)
    WHERE status = 'pending' AND run_at <= updated_at;

DROP INDEX tasks_due;
CREATE INDEX tasks_due ON tasks (queue, run_at, updated_at)
    WHERE status = 'pending' AND run_at > updated_at;
