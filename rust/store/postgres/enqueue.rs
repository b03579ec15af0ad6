//! Enqueue: keyless runs of a batch in one set-based statement (tasks and payloads from
//! arrays), each task with a unique key on its own (`ON CONFLICT DO NOTHING` on the partial
//! unique index, so two hosts enqueueing the same key at once get one task).

use postgres::GenericClient;
use postgres::types::Type;

use super::events;
use super::pool::Db;
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::json;
use crate::store::TaskEvents;
use crate::task::{Enqueued, NewTask, TaskId};

/// Ids are drawn in the batch's order (`WITH ORDINALITY`), so a batch keeps FIFO; payloads go
/// to their own table (an empty one has no row); waiting hosts are notified (at commit). One
/// statement, atomic on its own: a batch without unique keys needs no transaction around it.
/// (The sequence's name is looked up once: `pg_get_serial_sequence` on every row cost more
/// than the insert.)
const INSERT_MANY_SQL: &str = "WITH s AS MATERIALIZED (
         SELECT pg_get_serial_sequence('tasks', 'id')::regclass AS seq),
     r AS MATERIALIZED (
         SELECT nextval(s.seq) AS id, u.*
         FROM s, unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
                     $7::bytea[]) WITH ORDINALITY
              AS u(name, grp, priority, run_at, max_attempts, payload, ord)
         ORDER BY u.ord),
     ins AS (
         INSERT INTO tasks (id, queue, name, resource_group, priority, run_at, status,
                            max_attempts, created_at, updated_at)
         OVERRIDING SYSTEM VALUE
         SELECT id, $1, name, grp, priority, run_at, 'pending', max_attempts, $8, $8 FROM r),
     pay AS (
         INSERT INTO task_payloads (task_id, payload)
         SELECT id, payload FROM r WHERE length(payload) > 0),
     n AS (SELECT count(CASE WHEN $9::text IS NOT NULL THEN pg_notify($9, $1) END) AS sent)
     SELECT ord, id FROM r CROSS JOIN n";

/// From this many keyless tasks on, a batch goes in by COPY: the server writes its rows in
/// multi-row batches (an `INSERT ... SELECT` writes them one by one), at the cost of two more
/// round trips (the ids, the payloads' COPY) that a small batch would notice.
const COPY_FROM: usize = 1024;

/// A batch's ids from the table's sequence (sorted, they keep the batch's order: FIFO).
const DRAW_IDS_SQL: &str = "WITH s AS MATERIALIZED (
         SELECT pg_get_serial_sequence('tasks', 'id')::regclass AS seq)
     SELECT array_agg(nextval(s.seq)) FROM s, generate_series(1, $1::bigint)";

/// COPY writes identity columns as given (as `OVERRIDING SYSTEM VALUE` would).
const COPY_TASKS_SQL: &str =
    "COPY tasks (id, queue, name, resource_group, priority, run_at, status,
                   max_attempts, created_at, updated_at) FROM STDIN (FORMAT binary)";
const COPY_TASK_TYPES: [Type; 10] = [
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
];
const COPY_PAYLOADS_SQL: &str = "COPY task_payloads (task_id, payload) FROM STDIN (FORMAT binary)";

const INSERT_KEYED_SQL: &str = "INSERT INTO tasks (queue, name, resource_group, priority, run_at,
                            status, max_attempts, unique_key, created_at, updated_at, cache_ttl_ms)
     VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $8, $9)
     ON CONFLICT (queue, unique_key)
         WHERE unique_key IS NOT NULL AND status IN ('pending', 'running') DO NOTHING
     RETURNING id";

/// The newest completed run of a task with this cache key whose entry is still live.
const CACHED_SQL: &str = "SELECT id FROM tasks
     WHERE queue = $1 AND unique_key = $2 AND status = 'completed'
       AND cache_ttl_ms IS NOT NULL AND name = $3 AND finished_at + cache_ttl_ms > $4
     ORDER BY finished_at DESC LIMIT 1";

const HOLDER_SQL: &str = "SELECT id FROM tasks
     WHERE queue = $1 AND unique_key = $2 AND status IN ('pending', 'running')";

/// Inserts `tasks` in order; a task whose unique key an unfinished task holds is that task.
/// Notifies `channel` (at commit) when given.
pub fn insert_all<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    tasks: &[NewTask],
    task_events: TaskEvents,
    channel: Option<&str>,
    now: Millis,
) -> Result<Vec<Enqueued>> {
    // Whether this call notified `queue` (another call in the same transaction may have
    // notified another queue).
    let notified_before = std::mem::take(&mut db.notified);
    let mut out = Vec::with_capacity(tasks.len());
    let mut rest = tasks;
    while !rest.is_empty() {
        let keyless = rest.iter().take_while(|t| t.unique_key.is_none()).count();
        if keyless >= COPY_FROM {
            copy_many(db, queue, &rest[..keyless], channel, now, &mut out)?;
            rest = &rest[keyless..];
        } else if keyless > 0 {
            insert_many(db, queue, &rest[..keyless], channel, now, &mut out)?;
            rest = &rest[keyless..];
        } else {
            out.push(insert_keyed(db, queue, &rest[0], now)?);
            rest = &rest[1..];
        }
    }
    if let Some(channel) = channel.filter(|_| !db.notified && out.iter().any(|e| e.created)) {
        events::notify(db, channel, queue)?;
    }
    db.notified |= notified_before;
    if task_events == TaskEvents::All {
        for (task, e) in tasks.iter().zip(&out) {
            if e.created {
                let detail = format!(r#"{{"name":{}}}"#, json::string(&task.name));
                let group = Some(&*task.resource_group);
                events::record_task(db, queue, group, Some(e.id), "enqueued", &detail, now)?;
            }
        }
    }
    Ok(out)
}

fn insert_many<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    tasks: &[NewTask],
    channel: Option<&str>,
    now: Millis,
    out: &mut Vec<Enqueued>,
) -> Result<()> {
    let names: Vec<&str> = tasks.iter().map(|t| &*t.name).collect();
    let groups: Vec<&str> = tasks.iter().map(|t| &*t.resource_group).collect();
    let priorities: Vec<i64> = tasks.iter().map(|t| t.priority).collect();
    let run_ats: Vec<i64> = tasks.iter().map(|t| t.run_at.unwrap_or(now)).collect();
    let attempts: Vec<i64> = tasks.iter().map(|t| t.max_attempts).collect();
    let payloads: Vec<&[u8]> = tasks.iter().map(|t| &*t.payload).collect();
    let rows = db.query(
        INSERT_MANY_SQL,
        &[
            &queue,
            &names,
            &groups,
            &priorities,
            &run_ats,
            &attempts,
            &payloads,
            &now,
            &channel,
        ],
    )?;
    db.notified |= channel.is_some();
    let mut ids: Vec<(i64, TaskId)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    if ids.len() != tasks.len() {
        return Err(Error::Storage(format!(
            "a {}-row insert reported {} rows",
            tasks.len(),
            ids.len()
        )));
    }
    ids.sort_unstable();
    out.extend(ids.into_iter().map(|(_, id)| Enqueued::new(id)));
    Ok(())
}

/// The same rows as `insert_many`, by COPY.
fn copy_many<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    tasks: &[NewTask],
    channel: Option<&str>,
    now: Millis,
    out: &mut Vec<Enqueued>,
) -> Result<()> {
    let drawn: Option<Vec<TaskId>> = db.query_one(DRAW_IDS_SQL, &[&(tasks.len() as i64)])?.get(0);
    let mut ids = drawn.unwrap_or_default();
    ids.sort_unstable();
    if ids.len() != tasks.len() {
        return Err(Error::Storage(format!(
            "drew {} ids for {} tasks",
            ids.len(),
            tasks.len()
        )));
    }
    db.copy_in(COPY_TASKS_SQL, &COPY_TASK_TYPES, |rows| {
        for (id, t) in ids.iter().zip(tasks) {
            let run_at = t.run_at.unwrap_or(now);
            rows.write(&[
                id,
                &queue,
                &&*t.name,
                &&*t.resource_group,
                &t.priority,
                &run_at,
                &"pending",
                &t.max_attempts,
                &now,
                &now,
            ])?;
        }
        Ok(())
    })?;
    if tasks.iter().any(|t| !t.payload.is_empty()) {
        db.copy_in(COPY_PAYLOADS_SQL, &[Type::INT8, Type::BYTEA], |rows| {
            for (id, t) in ids.iter().zip(tasks) {
                if !t.payload.is_empty() {
                    rows.write(&[id, &&*t.payload])?;
                }
            }
            Ok(())
        })?;
    }
    if let Some(channel) = channel {
        events::notify(db, channel, queue)?;
    }
    out.extend(ids.into_iter().map(Enqueued::new));
    Ok(())
}

fn insert_keyed<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    task: &NewTask,
    now: Millis,
) -> Result<Enqueued> {
    let key = task.unique_key.as_deref();
    if task.cache_ttl.is_some()
        && let Some(row) = db.query_opt(CACHED_SQL, &[&queue, &key, &&*task.name, &now])?
    {
        return Ok(Enqueued {
            id: row.get(0),
            created: false,
            cached: true,
        });
    }
    loop {
        let inserted = db.query_opt(
            INSERT_KEYED_SQL,
            &[
                &queue,
                &&*task.name,
                &&*task.resource_group,
                &task.priority,
                &task.run_at.unwrap_or(now),
                &task.max_attempts,
                &key,
                &now,
                &task.cache_ttl,
            ],
        )?;
        if let Some(row) = inserted {
            let id: TaskId = row.get(0);
            if !task.payload.is_empty() {
                db.execute(
                    "INSERT INTO task_payloads (task_id, payload) VALUES ($1, $2)",
                    &[&id, &&*task.payload],
                )?;
            }
            return Ok(Enqueued::new(id));
        }
        // The holder may have finished since the conflict: then insert again.
        if let Some(row) = db.query_opt(HOLDER_SQL, &[&queue, &key])? {
            return Ok(Enqueued {
                id: row.get(0),
                created: false,
                cached: false,
            });
        }
    }
}

/// Ends up to `limit` cache entries that expired by `now` (their ttl set to NULL, so the
/// partial indexes keep only live entries); returns how many.
pub fn end_expired_cache<C: GenericClient>(
    db: &mut Db<'_, C>,
    now: Millis,
    limit: usize,
) -> Result<u64> {
    db.execute(
        "UPDATE tasks SET cache_ttl_ms = NULL WHERE id IN (
             SELECT id FROM tasks
             WHERE status = 'completed' AND cache_ttl_ms IS NOT NULL
               AND finished_at + cache_ttl_ms <= $1
             LIMIT $2 FOR UPDATE SKIP LOCKED)",
        &[&now, &(limit as i64)],
    )
}

/// Ends the cache entries of task `name` (one key, or all): the runs stay, as history.
pub fn clear_cache<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    name: &str,
    key: Option<&str>,
) -> Result<u64> {
    db.execute(
        "UPDATE tasks SET cache_ttl_ms = NULL
         WHERE queue = $1 AND status = 'completed' AND cache_ttl_ms IS NOT NULL
           AND name = $2 AND ($3::text IS NULL OR unique_key = $3)",
        &[&queue, &name, &key],
    )
}
