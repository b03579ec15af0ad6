//! Inserting tasks, with unique-key deduplication.

use std::sync::OnceLock;

use rusqlite::{OptionalExtension, Transaction};

use super::events;
use super::finish::TaskEvents;
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::json;
use crate::task::{Enqueued, NewTask};

/// Rows per multi-row INSERT, largest first: per-statement work (cursors, reset, the
/// AUTOINCREMENT sequence update) is shared by the rows of a statement, and a short batch
/// still avoids the one-row path. At most 6 parameters a row: far below SQLite's limit.
const TIERS: [usize; 2] = [128, 16];

/// Payloads longer than this go to `task_payloads` (see migration 4); the task's row keeps
/// an empty one. Below it, rewriting the payload with the row costs less than the extra insert.
pub const INLINE_PAYLOAD_MAX: usize = 256;

/// What the task row stores: the payload itself, or nothing if it is stored apart.
fn row_payload<'a>(task: &'a NewTask) -> &'a [u8] {
    if task.payload.len() > INLINE_PAYLOAD_MAX {
        &[]
    } else {
        &task.payload
    }
}

/// Stores the payload of task `id` apart if it is too large for the row.
fn store_apart(tx: &Transaction<'_>, id: i64, task: &NewTask) -> Result<()> {
    if task.payload.len() > INLINE_PAYLOAD_MAX {
        tx.prepare_cached("INSERT INTO task_payloads (task_id, payload) VALUES (?1, ?2)")?
            .execute((id, &task.payload))?;
    }
    Ok(())
}

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
        // Runs of keyless tasks go in multi-row statements; a task with a unique key needs
        // its own check.
        let mut keyless = rest.iter().take_while(|t| t.unique_key.is_none()).count();
        while let Some(&rows) = TIERS.iter().find(|&&rows| rows <= keyless) {
            insert_chunk(tx, queue, &rest[..rows], now, &mut out)?;
            rest = &rest[rows..];
            keyless -= rows;
        }
        if let Some((task, tail)) = rest.split_first() {
            insert_one(tx, queue, task, now, &mut out)?;
            rest = tail;
        }
    }
    if task_events == TaskEvents::All {
        for (task, e) in tasks.iter().zip(&out) {
            if e.created {
                let detail = format!(r#"{{"name":{}}}"#, json::string(&task.name));
                let group = Some(&*task.resource_group);
                events::record_task(tx, queue, group, Some(e.id), "enqueued", &detail, now)?;
            }
        }
    }
    Ok(out)
}

/// The INSERT for `rows` keyless rows. `uniform`: every row shares name, group, priority,
/// run_at and max_attempts (the usual batch: one task, its default options), bound once,
/// and only payloads are per row (measured: ~12% faster than binding all). Otherwise only
/// the queue and the time are shared.
fn chunk_sql(rows: usize, uniform: bool) -> &'static str {
    static SQL: [[OnceLock<String>; 2]; TIERS.len()] =
        [const { [const { OnceLock::new() }; 2] }; TIERS.len()];
    let tier = TIERS.iter().position(|&r| r == rows).expect("a tier size");
    SQL[tier][usize::from(uniform)].get_or_init(|| {
        let values: Vec<String> = (0..rows)
            .map(|i| {
                if uniform {
                    format!(
                        "(?1, ?2, ?3, ?{}, ?4, ?5, 'pending', ?6, NULL, ?7, ?7)",
                        8 + i
                    )
                } else {
                    let p = 3 + 6 * i;
                    format!(
                        "(?1, ?{}, ?{}, ?{}, ?{}, ?{}, 'pending', ?{}, NULL, ?2, ?2)",
                        p,
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5
                    )
                }
            })
            .collect();
        format!(
            "INSERT INTO tasks (queue, name, resource_group, payload, priority, run_at, status,
                                max_attempts, unique_key, created_at, updated_at)
             VALUES {}",
            values.join(", ")
        )
    })
}

/// One multi-row INSERT of keyless tasks. No `RETURNING`: SQLite collects returned rows
/// in a temporary table (measured: +30% on the insert). The ids are known
/// anyway: the statement holds the write lock and inserts its VALUES in order, and
/// AUTOINCREMENT gives each row the largest id so far plus one, so the rows took the
/// `changes` ids ending at `last_insert_rowid` (no trigger inserts into tasks: see
/// `tests::no_insert_trigger_on_tasks`).
fn insert_chunk(
    tx: &Transaction<'_>,
    queue: &str,
    chunk: &[NewTask],
    now: Millis,
    out: &mut Vec<Enqueued>,
) -> Result<()> {
    let first = &chunk[0];
    let run_at = |t: &NewTask| t.run_at.unwrap_or(now);
    let uniform = chunk.iter().all(|t| {
        t.name == first.name
            && t.resource_group == first.resource_group
            && t.priority == first.priority
            && run_at(t) == run_at(first)
            && t.max_attempts == first.max_attempts
    });
    let mut stmt = tx.prepare_cached(chunk_sql(chunk.len(), uniform))?;
    stmt.raw_bind_parameter(1, queue)?;
    if uniform {
        stmt.raw_bind_parameter(2, &first.name)?;
        stmt.raw_bind_parameter(3, &first.resource_group)?;
        stmt.raw_bind_parameter(4, first.priority)?;
        stmt.raw_bind_parameter(5, run_at(first))?;
        stmt.raw_bind_parameter(6, first.max_attempts)?;
        stmt.raw_bind_parameter(7, now)?;
        for (i, task) in chunk.iter().enumerate() {
            stmt.raw_bind_parameter(8 + i, row_payload(task))?;
        }
    } else {
        stmt.raw_bind_parameter(2, now)?;
        for (i, task) in chunk.iter().enumerate() {
            let p = 3 + 6 * i;
            stmt.raw_bind_parameter(p, &task.name)?;
            stmt.raw_bind_parameter(p + 1, &task.resource_group)?;
            stmt.raw_bind_parameter(p + 2, row_payload(task))?;
            stmt.raw_bind_parameter(p + 3, task.priority)?;
            stmt.raw_bind_parameter(p + 4, run_at(task))?;
            stmt.raw_bind_parameter(p + 5, task.max_attempts)?;
        }
    }
    let inserted = stmt.raw_execute()?;
    if inserted != chunk.len() {
        return Err(Error::Storage(format!(
            "a {}-row insert reported {inserted} rows",
            chunk.len()
        )));
    }
    let last = tx.last_insert_rowid();
    let first_id = last - inserted as i64 + 1;
    for (id, task) in (first_id..=last).zip(chunk) {
        store_apart(tx, id, task)?;
    }
    out.extend((first_id..=last).map(Enqueued::new));
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
        if task.cache_ttl.is_some()
            && let Some(id) = cached(tx, queue, &task.name, key, now)?
        {
            out.push(Enqueued {
                id,
                created: false,
                cached: true,
            });
            return Ok(());
        }
        let found = tx
            .prepare_cached(
                "SELECT id FROM tasks
                 WHERE queue = ?1 AND unique_key = ?2 AND status IN ('pending', 'running')",
            )?
            .query_row((queue, key), |r| r.get(0))
            .optional()?;
        if let Some(id) = found {
            out.push(Enqueued {
                id,
                created: false,
                cached: false,
            });
            return Ok(());
        }
    }
    tx.prepare_cached(
        "INSERT INTO tasks (queue, name, resource_group, payload, priority, run_at, status,
                            max_attempts, unique_key, created_at, updated_at, cache_ttl_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?9, ?9, ?10)",
    )?
    .execute((
        queue,
        &task.name,
        &task.resource_group,
        row_payload(task),
        task.priority,
        task.run_at.unwrap_or(now),
        task.max_attempts,
        &task.unique_key,
        now,
        task.cache_ttl,
    ))?;
    let id = tx.last_insert_rowid();
    store_apart(tx, id, task)?;
    // No history row: `history` derives the enqueue from created_at.
    out.push(Enqueued::new(id));
    Ok(())
}

/// The newest completed run of task `name` with cache key `key` whose entry is still live.
fn cached(
    tx: &Transaction<'_>,
    queue: &str,
    name: &str,
    key: &str,
    now: Millis,
) -> Result<Option<i64>> {
    Ok(tx
        .prepare_cached(
            "SELECT id FROM tasks
             WHERE queue = ?1 AND unique_key = ?2 AND status = 'completed'
               AND cache_ttl_ms IS NOT NULL AND name = ?3 AND finished_at + cache_ttl_ms > ?4
             ORDER BY finished_at DESC LIMIT 1",
        )?
        .query_row((queue, key, name, now), |r| r.get(0))
        .optional()?)
}

/// Ends up to `limit` cache entries that expired by `now` (their ttl set to NULL, so the
/// partial indexes keep only live entries); returns how many.
pub fn end_expired_cache(tx: &Transaction<'_>, now: Millis, limit: usize) -> Result<u64> {
    let n = tx
        .prepare_cached(
            "UPDATE tasks SET cache_ttl_ms = NULL WHERE id IN (
                 SELECT id FROM tasks
                 WHERE status = 'completed' AND cache_ttl_ms IS NOT NULL
                   AND finished_at + cache_ttl_ms <= ?1
                 LIMIT ?2)",
        )?
        .execute((now, limit as i64))?;
    Ok(n as u64)
}

/// Ends the cache entries of task `name` (one key, or all): the runs stay, as history.
pub fn clear_cache(
    tx: &Transaction<'_>,
    queue: &str,
    name: &str,
    key: Option<&str>,
) -> Result<u64> {
    let n = tx
        .prepare_cached(
            "UPDATE tasks SET cache_ttl_ms = NULL
             WHERE queue = ?1 AND status = 'completed' AND cache_ttl_ms IS NOT NULL
               AND name = ?2 AND (?3 IS NULL OR unique_key = ?3)",
        )?
        .execute((queue, name, key))?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::super::{Options, SqliteStore, query_plan, read_one};

    #[test]
    fn cache_lookups_and_expiry_use_their_partial_indexes() {
        let hit = query_plan(
            "SELECT id FROM tasks
             WHERE queue = ?1 AND unique_key = ?2 AND status = 'completed'
               AND cache_ttl_ms IS NOT NULL AND name = ?3 AND finished_at + cache_ttl_ms > ?4
             ORDER BY finished_at DESC LIMIT 1",
            ("q", "k", "t", 0),
        );
        assert!(hit.contains("tasks_cached"), "{hit}");
        let expired = query_plan(
            "SELECT id FROM tasks WHERE status = 'completed' AND cache_ttl_ms IS NOT NULL
               AND finished_at + cache_ttl_ms <= ?1 LIMIT ?2",
            (0, 10),
        );
        assert!(expired.contains("tasks_cache_expiry"), "{expired}");
    }

    /// `insert_chunk` derives ids from `last_insert_rowid`: a trigger inserting into tasks
    /// would take ids in between.
    #[test]
    fn no_insert_trigger_on_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("q.db"), Options::default()).unwrap();
        let triggers: Vec<String> = store
            .with_conn(
                |l| &l.reader,
                |conn| {
                    let mut stmt = conn.prepare(
                        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'tasks'",
                    )?;
                    let rows = stmt.query_map([], |r| r.get(0))?;
                    Ok(rows.collect::<rusqlite::Result<_>>()?)
                },
            )
            .unwrap();
        for sql in &triggers {
            assert!(!sql.to_uppercase().contains(" INSERT ON "), "{sql}");
        }
        // The same holds for any trigger that inserts into tasks, on any table.
        let all: String = store
            .with_conn(
                |l| &l.reader,
                |conn| {
                    Ok(conn.query_row(
                        "SELECT coalesce(group_concat(sql, ';'), '') FROM sqlite_master WHERE type = 'trigger'",
                        [],
                        |r| r.get(0),
                    )?)
                },
            )
            .unwrap();
        assert!(!all.to_uppercase().contains("INSERT INTO TASKS"), "{all}");
    }

    fn task(payload: Vec<u8>, unique_key: Option<&str>) -> crate::task::NewTask<'static> {
        crate::task::NewTask {
            payload: payload.into(),
            max_attempts: 1,
            unique_key: unique_key.map(|k| std::borrow::Cow::Owned(k.to_string())),
            ..crate::store::testing::task("t", 0)
        }
    }

    /// Payloads over the inline limit live in `task_payloads` (the row keeps an empty one),
    /// whichever insert path took them; claims, reads and listings give every payload back
    /// byte for byte, an empty one included; deleting a task deletes its payload.
    #[test]
    fn large_payloads_are_stored_apart_and_read_back_whole() {
        use super::INLINE_PAYLOAD_MAX;
        use crate::policy::retention::{Keep, Retention};
        use crate::store::Store;
        use crate::store::operations::{Operations, Page, TaskFilter};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("q.db"), Options::default()).unwrap();
        let sized = |n: usize, seed: u8| -> Vec<u8> { (0..n).map(|i| seed ^ (i as u8)).collect() };
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        // Multi-row inserts (16 and 128 rows), mixing sizes around the limit...
        for i in 0..144 {
            let n = match i % 4 {
                0 => INLINE_PAYLOAD_MAX,
                1 => INLINE_PAYLOAD_MAX + 1,
                2 => 3,
                _ => 20_000,
            };
            payloads.push(sized(n, i as u8));
        }
        let batch: Vec<_> = payloads.iter().map(|p| task(p.clone(), None)).collect();
        let mut ids: Vec<i64> = store
            .enqueue("q", &batch)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        // ...single-row inserts (a unique key), and an empty payload.
        for (i, n) in [0usize, 5000, 10].into_iter().enumerate() {
            payloads.push(sized(n, 7));
            let one = task(payloads.last().unwrap().clone(), Some(&format!("k{i}")));
            ids.push(store.enqueue("q", &[one]).unwrap()[0].id);
        }
        let large = payloads
            .iter()
            .filter(|p| p.len() > INLINE_PAYLOAD_MAX)
            .count() as i64;
        assert_eq!(
            read_one(&store, "SELECT count(*) FROM task_payloads"),
            large
        );
        assert_eq!(
            read_one(
                &store,
                "SELECT count(*) FROM tasks WHERE length(payload) = 0"
            ),
            large + 1
        );
        for (id, payload) in ids.iter().zip(&payloads) {
            assert_eq!(&store.get("q", *id).unwrap().payload, payload, "get {id}");
        }
        let page = Page {
            after: None,
            newest_first: false,
            limit: 1000,
            until: None,
        };
        let listed = store.list("q", &TaskFilter::default(), page).unwrap();
        assert_eq!(listed.len(), payloads.len());
        for (record, payload) in listed.iter().zip(&payloads) {
            assert_eq!(&record.payload, payload, "list {}", record.id);
        }
        let claimed = store.claim("q", "w", 1000, 60_000).unwrap();
        assert_eq!(claimed.len(), payloads.len());
        for (t, payload) in claimed.iter().zip(&payloads) {
            assert_eq!(&t.payload, payload, "claim {}", t.id);
            store.complete(t.id, t.token, b"null").unwrap();
        }
        let drop_all = Keep {
            max_age_ms: None,
            max_count: Some(0),
        };
        let pruned = store
            .prune(
                "q",
                &Retention {
                    completed: drop_all,
                    dead: drop_all,
                },
            )
            .unwrap();
        assert_eq!(pruned, payloads.len() as u64);
        assert_eq!(read_one(&store, "SELECT count(*) FROM task_payloads"), 0);
    }
}
