//! Periodic tasks: the schedules workers declare, and the enqueue of one tick, at most
//! once per schedule however many workers race for it (see migration 6).

use rusqlite::{Connection, OptionalExtension, Row, Transaction};

use super::enqueue;
use super::finish::TaskEvents;
use crate::clock::Millis;
use crate::error::Result;
use crate::store::operations::Schedule;
use crate::task::{Enqueued, NewTask};

const COLUMNS: &str = "name, task, cron, tz, missed, declared_at, last_tick, last_task_id, seen_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Schedule> {
    Ok(Schedule {
        name: r.get(0)?,
        task: r.get(1)?,
        cron: r.get(2)?,
        tz: r.get(3)?,
        missed: r.get(4)?,
        declared_at: r.get(5)?,
        last_tick: r.get(6)?,
        last_task_id: r.get(7)?,
        seen_at: r.get(8)?,
    })
}

/// Upserts the definition. A changed cron or time zone restarts `declared_at` (its first
/// tick comes after now, not a "missed" tick of the old definition); `last_tick` stays, so
/// a tick already enqueued is never enqueued again.
pub fn declare(tx: &Transaction<'_>, queue: &str, s: &Schedule, now: Millis) -> Result<Schedule> {
    tx.prepare_cached(
        "INSERT INTO schedules (queue, name, task, cron, tz, missed, declared_at, seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
         ON CONFLICT (queue, name) DO UPDATE SET
             declared_at = CASE WHEN cron = excluded.cron AND tz = excluded.tz
                                THEN declared_at ELSE excluded.declared_at END,
             task = excluded.task, cron = excluded.cron, tz = excluded.tz,
             missed = excluded.missed, seen_at = excluded.seen_at",
    )?
    .execute((queue, &s.name, &s.task, &s.cron, &s.tz, &s.missed, now))?;
    let sql = format!("SELECT {COLUMNS} FROM schedules WHERE queue = ?1 AND name = ?2");
    Ok(tx.query_row(&sql, (queue, &s.name), from_row)?)
}

/// In the caller's write transaction, so the check and the raise are one step: a second
/// worker racing for the same tick waits for the lock, then sees it taken.
pub fn enqueue_tick(
    tx: &Transaction<'_>,
    queue: &str,
    name: &str,
    tick: Millis,
    task: &NewTask,
    task_events: TaskEvents,
    now: Millis,
) -> Result<Option<Enqueued>> {
    let last: Option<Option<Millis>> = tx
        .prepare_cached("SELECT last_tick FROM schedules WHERE queue = ?1 AND name = ?2")?
        .query_row((queue, name), |r| r.get(0))
        .optional()?;
    let Some(last) = last else {
        return Err(crate::error::Error::InvalidArgument(format!(
            "no schedule named {name:?} is declared on queue {queue:?}"
        )));
    };
    if last.is_some_and(|last| last >= tick) {
        return Ok(None);
    }
    let done = enqueue::insert_all(tx, queue, std::slice::from_ref(task), task_events, now)?;
    let enqueued = done[0];
    tx.prepare_cached(
        "UPDATE schedules SET last_tick = ?3, last_task_id = ?4 WHERE queue = ?1 AND name = ?2",
    )?
    .execute((queue, name, tick, enqueued.id))?;
    Ok(Some(enqueued))
}

pub fn list(conn: &Connection, queue: &str) -> Result<Vec<Schedule>> {
    let sql = format!("SELECT {COLUMNS} FROM schedules WHERE queue = ?1 ORDER BY name");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([queue], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
