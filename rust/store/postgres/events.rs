//! The events table (as in the SQLite engine) and the NOTIFY that wakes other hosts.

use postgres::GenericClient;

use super::pool::Db;
use crate::clock::Millis;
use crate::error::Result;
use crate::resource_group::Event;
use crate::task::{RunEnd, TaskId};

/// Wakes every process listening on `channel` when the caller's transaction commits.
/// PostgreSQL folds identical notifications of one transaction into one.
pub fn notify<C: GenericClient>(db: &mut Db<'_, C>, channel: &str, queue: &str) -> Result<()> {
    db.execute("SELECT pg_notify($1, $2)", &[&channel, &queue])?;
    db.notified = true;
    Ok(())
}

/// Appends one event (of a task when `task_id` is given) in the caller's transaction.
pub fn record_task<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    group: Option<&str>,
    task_id: Option<TaskId>,
    kind: &str,
    detail: &str,
    now: Millis,
) -> Result<()> {
    db.execute(
        "INSERT INTO events (at, queue, resource_group, task_id, kind, detail)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&now, &queue, &group, &task_id, &kind, &detail],
    )?;
    Ok(())
}

/// Appends one event of `kind` for each task of `ids` (in `groups`, alike), in one statement.
pub fn record_tasks<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    ids: &[TaskId],
    groups: &[String],
    kind: &str,
    detail: &str,
    now: Millis,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    db.execute(
        "INSERT INTO events (at, queue, resource_group, task_id, kind, detail)
         SELECT $1, $2, g, t, $5, $6
         FROM unnest($3::text[], $4::bigint[]) WITH ORDINALITY AS u(g, t, ord)
         ORDER BY ord",
        &[&now, &queue, &groups, &ids, &kind, &detail],
    )?;
    Ok(())
}

/// Appends one event of the task of run `end`.
pub fn record_run<C: GenericClient>(
    db: &mut Db<'_, C>,
    end: &RunEnd,
    kind: &str,
    detail: &str,
    now: Millis,
) -> Result<()> {
    let group = Some(end.group.as_str());
    record_task(db, &end.queue, group, Some(end.task_id), kind, detail, now)
}

fn event(r: &postgres::Row) -> Event {
    Event {
        id: r.get(0),
        at: r.get(1),
        queue: r.get(2),
        resource_group: r.get(3),
        task_id: r.get(4),
        kind: r.get(5),
        detail: r.get(6),
    }
}

/// Events of `queue` after id `after` (oldest first); with `group`, that group's own events.
pub fn read<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    group: Option<&str>,
    after: i64,
    limit: usize,
) -> Result<Vec<Event>> {
    let limit = limit as i64;
    let rows = match group {
        None => db.query(
            "SELECT id, at, queue, resource_group, task_id, kind, detail FROM events
             WHERE id > $2 AND queue = $1 ORDER BY id LIMIT $3",
            &[&queue, &after, &limit],
        )?,
        Some(group) => db.query(
            "SELECT id, at, queue, resource_group, task_id, kind, detail FROM events
             WHERE id > $3 AND queue = $1 AND resource_group = $2 AND task_id IS NULL
             ORDER BY id LIMIT $4",
            &[&queue, &group, &after, &limit],
        )?,
    };
    Ok(rows.iter().map(event).collect())
}

/// The newest `limit` events of `queue` up to id `up_to`, of `kinds` (all if empty), oldest
/// first.
pub fn latest<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    kinds: &[String],
    up_to: i64,
    limit: usize,
) -> Result<Vec<Event>> {
    let limit = limit as i64;
    let mut rows = db.query(
        "SELECT id, at, queue, resource_group, task_id, kind, detail FROM events
         WHERE queue = $1 AND id <= $2 AND (cardinality($3::text[]) = 0 OR kind = ANY($3))
         ORDER BY id DESC LIMIT $4",
        &[&queue, &up_to, &kinds, &limit],
    )?;
    rows.reverse();
    Ok(rows.iter().map(event).collect())
}
