//! Periodic tasks: one row per declared schedule; a tick is enqueued in the transaction that
//! raises `last_tick`, under the schedule's row lock, so however many hosts run a schedule,
//! each tick is enqueued at most once.

use postgres::GenericClient;

use super::enqueue;
use super::pool::Db;
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::store::TaskEvents;
use crate::store::operations::Schedule;
use crate::task::{Enqueued, NewTask};

const COLUMNS: &str = "name, task, cron, tz, missed, declared_at, last_tick, last_task_id, seen_at";

fn from_row(r: &postgres::Row) -> Schedule {
    Schedule {
        name: r.get(0),
        task: r.get(1),
        cron: r.get(2),
        tz: r.get(3),
        missed: r.get(4),
        declared_at: r.get(5),
        last_tick: r.get(6),
        last_task_id: r.get(7),
        seen_at: r.get(8),
    }
}

pub fn declare<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    s: &Schedule,
    now: Millis,
) -> Result<Schedule> {
    db.execute(
        "INSERT INTO schedules (queue, name, task, cron, tz, missed, declared_at, seen_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
         ON CONFLICT (queue, name) DO UPDATE SET
             declared_at = CASE WHEN schedules.cron = excluded.cron AND schedules.tz = excluded.tz
                                THEN schedules.declared_at ELSE excluded.declared_at END,
             task = excluded.task, cron = excluded.cron, tz = excluded.tz,
             missed = excluded.missed, seen_at = excluded.seen_at",
        &[&queue, &s.name, &s.task, &s.cron, &s.tz, &s.missed, &now],
    )?;
    let row = db.query_one(
        &format!("SELECT {COLUMNS} FROM schedules WHERE queue = $1 AND name = $2"),
        &[&queue, &s.name],
    )?;
    Ok(from_row(&row))
}

pub fn enqueue_tick<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    (name, tick): (&str, Millis),
    task: &NewTask,
    (task_events, channel): (TaskEvents, &str),
    now: Millis,
) -> Result<Option<Enqueued>> {
    // Locked: a second host ticking at once waits here, then sees the tick taken.
    let last = db.query_opt(
        "SELECT last_tick FROM schedules WHERE queue = $1 AND name = $2 FOR UPDATE",
        &[&queue, &name],
    )?;
    let Some(last) = last else {
        return Err(Error::InvalidArgument(format!(
            "no schedule named {name:?} is declared on queue {queue:?}"
        )));
    };
    let last: Option<Millis> = last.get(0);
    if last.is_some_and(|last| last >= tick) {
        return Ok(None);
    }
    let enqueued = enqueue::insert_all(
        db,
        queue,
        std::slice::from_ref(task),
        task_events,
        Some(channel),
        now,
    )?[0];
    db.execute(
        "UPDATE schedules SET last_tick = $3, last_task_id = $4 WHERE queue = $1 AND name = $2",
        &[&queue, &name, &tick, &enqueued.id],
    )?;
    Ok(Some(enqueued))
}

pub fn list<C: GenericClient>(db: &mut Db<'_, C>, queue: &str) -> Result<Vec<Schedule>> {
    Ok(db
        .query(
            &format!("SELECT {COLUMNS} FROM schedules WHERE queue = $1 ORDER BY name"),
            &[&queue],
        )?
        .iter()
        .map(from_row)
        .collect())
}
