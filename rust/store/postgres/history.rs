//! The append-only log of task transitions, and the rows a run that ended other than
//! completed leaves (its claim and its end: claims are not written when they happen, see
//! `admin::history`).

use postgres::GenericClient;

use super::pool::Db;
use crate::clock::Millis;
use crate::error::Result;
use crate::task::{TaskId, TaskStatus};

/// One transition to append.
pub struct Row<'a> {
    pub task_id: TaskId,
    pub from: Option<TaskStatus>,
    pub to: TaskStatus,
    pub at: Millis,
    pub worker: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// Appends `rows` in order, in one statement.
pub fn append<C: GenericClient>(db: &mut Db<'_, C>, rows: &[Row<'_>]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<TaskId> = rows.iter().map(|r| r.task_id).collect();
    let from: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.from.map(TaskStatus::as_str))
        .collect();
    let to: Vec<&str> = rows.iter().map(|r| r.to.as_str()).collect();
    let at: Vec<Millis> = rows.iter().map(|r| r.at).collect();
    let worker: Vec<Option<&str>> = rows.iter().map(|r| r.worker).collect();
    let error: Vec<Option<&str>> = rows.iter().map(|r| r.error).collect();
    db.execute(
        "INSERT INTO task_history (task_id, from_status, to_status, at, worker, error)
         SELECT task_id, from_status, to_status, at, worker, error
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
              WITH ORDINALITY AS u(task_id, from_status, to_status, at, worker, error, ord)
         ORDER BY ord",
        &[&ids, &from, &to, &at, &worker, &error],
    )?;
    Ok(())
}

/// The two rows of a run that ended in `to` at `at`: its claim (when it started) and its end.
pub fn run_end<'a>(
    task_id: TaskId,
    started_at: Option<Millis>,
    worker: Option<&'a str>,
    to: TaskStatus,
    at: Millis,
    error: Option<&'a str>,
) -> impl Iterator<Item = Row<'a>> {
    let claim = started_at.map(|started| Row {
        task_id,
        from: Some(TaskStatus::Pending),
        to: TaskStatus::Running,
        at: started,
        worker,
        error: None,
    });
    let end = Row {
        task_id,
        from: Some(TaskStatus::Running),
        to,
        at,
        worker,
        error,
    };
    claim.into_iter().chain(std::iter::once(end))
}
