//! Inserting tasks, with unique-key deduplication.

use rusqlite::{OptionalExtension, Transaction};

use super::events;
use super::finish::TaskEvents;
use super::json;
use crate::clock::Millis;
use crate::error::Result;
use crate::task::{Enqueued, NewTask};

/// Inserts every task in the caller's transaction.
pub fn insert_all(
    tx: &Transaction<'_>,
    queue: &str,
    tasks: &[NewTask],
    task_events: TaskEvents,
    now: Millis,
) -> Result<Vec<Enqueued>> {
    let mut find_unique = tx.prepare_cached(
        "SELECT id FROM tasks
         WHERE queue = ?1 AND unique_key = ?2 AND status IN ('pending', 'running')",
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO tasks (queue, name, resource_group, payload, priority, run_at, status,
                            max_attempts, unique_key, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?9, ?9)",
    )?;
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        // We hold the write lock, so nobody can take the key between this check and the insert.
        if let Some(key) = &task.unique_key {
            if let Some(id) = find_unique
                .query_row((queue, key), |r| r.get(0))
                .optional()?
            {
                out.push(Enqueued { id, created: false });
                continue;
            }
        }
        insert.execute((
            queue,
            &task.name,
            &task.resource_group,
            &task.payload,
            task.priority,
            task.run_at.unwrap_or(now),
            task.max_attempts,
            &task.unique_key,
            now,
        ))?;
        // No history row: `history` derives the enqueue from created_at.
        let id = tx.last_insert_rowid();
        if task_events == TaskEvents::All {
            let detail = format!(r#"{{"name":{}}}"#, json::string(&task.name));
            let group = Some(task.resource_group.as_str());
            events::record_task(tx, queue, group, Some(id), "enqueued", &detail, now)?;
        }
        out.push(Enqueued { id, created: true });
    }
    Ok(out)
}
