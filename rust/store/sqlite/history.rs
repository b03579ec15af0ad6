//! The append-only log of task transitions.

use rusqlite::{Connection, OptionalExtension};

use crate::clock::Millis;
use crate::error::Result;
use crate::task::{TaskId, TaskStatus};

/// Appends one transition.
pub fn record(
    conn: &Connection,
    task_id: TaskId,
    from: Option<TaskStatus>,
    to: TaskStatus,
    at: Millis,
    worker: Option<&str>,
    error: Option<&str>,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO task_history (task_id, from_status, to_status, at, worker, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute((
        task_id,
        from.map(TaskStatus::as_str),
        to.as_str(),
        at,
        worker,
        error,
    ))?;
    Ok(())
}

/// Appends the same transition for many tasks in one statement (ids go in as a JSON array).
pub fn record_many(
    conn: &Connection,
    ids: &[TaskId],
    from: TaskStatus,
    to: TaskStatus,
    at: Millis,
    worker: Option<&str>,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let json = super::json::ids(ids.iter().copied());
    conn.prepare_cached(
        "INSERT INTO task_history (task_id, from_status, to_status, at, worker)
         SELECT value, ?2, ?3, ?4, ?5 FROM json_each(?1)",
    )?
    .execute((json, from.as_str(), to.as_str(), at, worker))?;
    Ok(())
}

/// The status of a task in `queue`, or `None` if there is no such task.
pub fn status_of(conn: &Connection, queue: &str, id: TaskId) -> Result<Option<TaskStatus>> {
    Ok(conn
        .prepare_cached("SELECT status FROM tasks WHERE id = ?1 AND queue = ?2")?
        .query_row((id, queue), |r| r.get(0))
        .optional()?)
}
