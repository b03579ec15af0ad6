//! Inserting tasks, with unique-key deduplication.

use rusqlite::{OptionalExtension, Transaction};

use super::events;
use super::finish::TaskEvents;
use super::json;
use crate::clock::Millis;
use crate::error::Result;
use crate::task::{Enqueued, NewTask};

/// Rows per multi-row INSERT: per-statement work (cursors, reset) is shared by the chunk;
/// 8 parameters a row stays far below SQLite's parameter limit.
const CHUNK: usize = 128;

/// Inserts every task in the caller's transaction.
pub fn insert_all(
    tx: &Transaction<'_>,
    queue: &str,
    tasks: &[NewTask],
    task_events: TaskEvents,
    now: Millis,
) -> Result<Vec<Enqueued>> {
    let mut out = Vec::with_capacity(tasks.len());
    let mut rest = tasks;
    while !rest.is_empty() {
        // Runs of keyless tasks go in chunks; a task with a unique key needs its own check.
        let keyless = rest.iter().take_while(|t| t.unique_key.is_none()).count();
        let chunked = keyless - keyless % CHUNK;
        if chunked > 0 {
            for chunk in rest[..chunked].chunks(CHUNK) {
                insert_chunk(tx, queue, chunk, now, &mut out)?;
            }
            rest = &rest[chunked..];
            continue;
        }
        insert_one(tx, queue, &rest[0], now, &mut out)?;
        rest = &rest[1..];
    }
    if task_events == TaskEvents::All {
        for (task, e) in tasks.iter().zip(&out) {
            if e.created {
                let detail = format!(r#"{{"name":{}}}"#, json::string(&task.name));
                let group = Some(task.resource_group.as_str());
                events::record_task(tx, queue, group, Some(e.id), "enqueued", &detail, now)?;
            }
        }
    }
    Ok(out)
}

/// `CHUNK` keyless tasks in one statement. Ids come from AUTOINCREMENT, so they rise in the
/// order the rows are inserted, which is the order of the VALUES list.
fn insert_chunk(
    tx: &Transaction<'_>,
    queue: &str,
    chunk: &[NewTask],
    now: Millis,
    out: &mut Vec<Enqueued>,
) -> Result<()> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        let row = "(?, ?, ?, ?, ?, ?, 'pending', ?, NULL, ?, ?)";
        format!(
            "INSERT INTO tasks (queue, name, resource_group, payload, priority, run_at, status,
                                max_attempts, unique_key, created_at, updated_at)
             VALUES {} RETURNING id",
            vec![row; CHUNK].join(", ")
        )
    });
    let mut stmt = tx.prepare_cached(sql)?;
    let mut params: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(CHUNK * 9);
    let run_ats: Vec<Millis> = chunk.iter().map(|t| t.run_at.unwrap_or(now)).collect();
    for (task, run_at) in chunk.iter().zip(&run_ats) {
        params.extend_from_slice(&[
            &queue as &dyn rusqlite::ToSql,
            &task.name,
            &task.resource_group,
            &task.payload,
            &task.priority,
            run_at,
            &task.max_attempts,
            &now,
            &now,
        ]);
    }
    let mut ids: Vec<i64> = stmt
        .query_map(params.as_slice(), |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ids.sort_unstable();
    out.extend(ids.into_iter().map(|id| Enqueued { id, created: true }));
    Ok(())
}

/// One task, deduplicated by its unique key if it has one.
fn insert_one(
    tx: &Transaction<'_>,
    queue: &str,
    task: &NewTask,
    now: Millis,
    out: &mut Vec<Enqueued>,
) -> Result<()> {
    // We hold the write lock, so nobody can take the key between this check and the insert.
    if let Some(key) = &task.unique_key {
        let found = tx
            .prepare_cached(
                "SELECT id FROM tasks
                 WHERE queue = ?1 AND unique_key = ?2 AND status IN ('pending', 'running')",
            )?
            .query_row((queue, key), |r| r.get(0))
            .optional()?;
        if let Some(id) = found {
            out.push(Enqueued { id, created: false });
            return Ok(());
        }
    }
    tx.prepare_cached(
        "INSERT INTO tasks (queue, name, resource_group, payload, priority, run_at, status,
                            max_attempts, unique_key, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?9, ?9)",
    )?
    .execute((
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
    Ok(())
}
