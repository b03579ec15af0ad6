//! Finished tasks of another store, stored as they were (`Operations::import_finished`).

use rusqlite::Transaction;

use super::enqueue::INLINE_PAYLOAD_MAX;
use super::history;
use crate::error::Result;
use crate::store::import::{FinishedTask, stored_transitions};
use crate::task::TaskId;

/// Inserts every task, its payload, result and stored history in the caller's transaction.
pub fn insert_all(
    tx: &Transaction<'_>,
    queue: &str,
    tasks: &[FinishedTask],
) -> Result<Vec<TaskId>> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO tasks (queue, name, resource_group, payload, priority, run_at, status,
                            attempts, max_attempts, lease_owner, unique_key, progress,
                            progress_message, last_error, created_at, updated_at, started_at,
                            finished_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?;
    let mut ids = Vec::with_capacity(tasks.len());
    for task in tasks {
        let r = &task.record;
        let apart = r.payload.len() > INLINE_PAYLOAD_MAX;
        let row_payload: &[u8] = if apart { &[] } else { &r.payload };
        insert.execute(rusqlite::params![
            queue,
            r.name,
            r.resource_group,
            row_payload,
            r.priority,
            r.run_at,
            r.status.as_str(),
            r.attempts,
            r.max_attempts,
            r.lease_owner,
            r.unique_key,
            r.progress,
            r.progress_message,
            r.last_error,
            r.created_at,
            r.updated_at,
            r.started_at,
            r.finished_at,
        ])?;
        let id = tx.last_insert_rowid();
        if apart {
            tx.prepare_cached("INSERT INTO task_payloads (task_id, payload) VALUES (?1, ?2)")?
                .execute((id, &r.payload))?;
        }
        if let Some(result) = &r.result {
            tx.prepare_cached(
                "INSERT INTO task_results (task_id, result, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute((id, result, r.finished_at.unwrap_or(r.updated_at)))?;
        }
        for t in stored_transitions(task) {
            history::record(
                tx,
                id,
                t.from,
                t.to,
                t.at,
                t.worker.as_deref(),
                t.error.as_deref(),
            )?;
        }
        ids.push(id);
    }
    Ok(ids)
}
