-- ferroq schema 4: large payloads apart from their task's row.
--
-- Why: a claim and a completion each rewrite the whole task row, payload included, so with
-- the payload in the row their cost grew with its size (measured, 500 tasks a batch: claim
-- 2.9 µs a task with a 10-byte payload, 18 µs with 4 KB; completion 3.4 -> 10.9 µs). A
-- payload over 256 bytes now lives here, written once; the task row keeps an empty one.
-- Small payloads stay in the row: one insert fewer on enqueue, and cheap to rewrite.
CREATE TABLE task_payloads (
    task_id INTEGER PRIMARY KEY,
    payload BLOB    NOT NULL
);

-- Deleting a task (retention, purge) takes its payload with it.
CREATE TRIGGER tasks_pruned_payload AFTER DELETE ON tasks BEGIN
    DELETE FROM task_payloads WHERE task_id = old.id;
END;
