-- When each event row was written, by the server's clock. Event ids come from a sequence, and
-- transactions commit in any order: an id below a visible event may still be in flight. A
-- tail holds back at such a gap until it fills or is old enough to be a rolled-back
-- transaction's (events.rs, `settled_through`). Rows from before this column are settled.
ALTER TABLE events ADD COLUMN written_ms BIGINT;
ALTER TABLE events ALTER COLUMN written_ms
    SET DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
