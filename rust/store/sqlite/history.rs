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

/// Appends the end of a run that did not complete: its claim (pending -> running when it
/// started, which claims no longer record, see `admin::history`) and the transition that
/// ended it.
pub fn record_run_end(
    conn: &Connection,
    task_id: TaskId,
    started_at: Option<Millis>,
    worker: Option<&str>,
    to: TaskStatus,
    at: Millis,
    error: Option<&str>,
) -> Result<()> {
    if let Some(started_at) = started_at {
        record(
            conn,
            task_id,
            Some(TaskStatus::Pending),
            TaskStatus::Running,
            started_at,
            worker,
            None,
        )?;
    }
    record(
        conn,
        task_id,
        Some(TaskStatus::Running),
        to,
        at,
        worker,
        error,
    )
}

/// The status of a task in `queue`, or `None` if there is no such task.
pub fn status_of(conn: &Connection, queue: &str, id: TaskId) -> Result<Option<TaskStatus>> {
    Ok(conn
        .prepare_cached("SELECT status FROM tasks WHERE id = ?1 AND queue = ?2")?
        .query_row((id, queue), |r| r.get(0))
        .optional()?)
}
