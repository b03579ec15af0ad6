-- Result cache, as in the SQLite engine's 0008: a completed task whose `cache_ttl_ms` is set
-- serves its result to identical enqueues (same `unique_key`) until finished_at + ttl.
ALTER TABLE tasks ADD COLUMN cache_ttl_ms BIGINT;
CREATE INDEX tasks_cached ON tasks (queue, unique_key, finished_at)
    WHERE status = 'completed' AND cache_ttl_ms IS NOT NULL;
-- Expired entries, for the workers' pruning pass (which sets their ttl to NULL).
CREATE INDEX tasks_cache_expiry ON tasks ((finished_at + cache_ttl_ms))
    WHERE status = 'completed' AND cache_ttl_ms IS NOT NULL;
