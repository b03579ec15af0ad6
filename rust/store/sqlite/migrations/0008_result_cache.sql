-- Result cache: a completed task whose `cache_ttl_ms` is set serves its result to identical
-- enqueues (same `unique_key`, which a cached task always has) until finished_at + ttl. The
-- entry is the task itself: no second copy of the result, pruned with the task by retention,
-- cleared by setting the ttl to NULL (the run stays in the history).
ALTER TABLE tasks ADD COLUMN cache_ttl_ms INTEGER;
CREATE INDEX tasks_cached ON tasks (queue, unique_key, finished_at)
    WHERE status = 'completed' AND cache_ttl_ms IS NOT NULL;
-- Expired entries, for the worker's pruning pass (which sets their ttl to NULL).
CREATE INDEX tasks_cache_expiry ON tasks (finished_at + cache_ttl_ms)
    WHERE status = 'completed' AND cache_ttl_ms IS NOT NULL;
