//! Inserting tasks, with unique-key deduplication.

use rusqlite::{OptionalExtension, Transaction};

use crate::clock::Millis;
use crate::error::Result;
use crate::task::{Enqueued, NewTask};

/// Inserts every task in the caller's transaction.
pub fn insert_all(
    tx: &Transaction<'_>,
    queue: &str,
    tasks: &[NewTask],
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
        out.push(Enqueued {
            id: tx.last_insert_rowid(),
            created: true,
        });
    }
    Ok(out)
}
