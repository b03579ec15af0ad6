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

/// How long an event id missing below a visible one may still be a running transaction's:
/// after that, a rolled-back one's (its id is never used).
pub const SETTLE_MS: i64 = 2_000;
/// Fresh ids a read looks through for gaps (then it reads up to the last it looked at).
const SCAN: i64 = 10_000;

/// How far after `after` every event id is settled: committed, or missing for longer than
/// `SETTLE_MS` before a later event was written (by the server's clock). Ids come from a
/// sequence and transactions commit in any order, so a reader that went past a gap could
/// skip the event of a transaction that committed after it read. Only gaps below events of
/// the last `SETTLE_MS` can still fill, so only those ids are looked at: below the newest
/// older event every id is settled (allocated earlier still). Also whether a gap held the
/// reader back (then it should look again later).
pub fn settled_through<C: GenericClient>(db: &mut Db<'_, C>, after: i64) -> Result<(i64, bool)> {
    // One statement, one snapshot: an event committed after it is not counted as settled.
    let rows = db.query(
        "WITH settled AS (
             SELECT coalesce(max(id), 0) AS id FROM events
             WHERE written_ms IS NULL
                OR written_ms < (extract(epoch FROM clock_timestamp()) * 1000)::bigint - $2
         )
         SELECT settled.id, (SELECT coalesce(max(id), 0) FROM events), e.id FROM settled
         LEFT JOIN LATERAL (
             SELECT id FROM events WHERE id > greatest($1, settled.id) ORDER BY id LIMIT $3
         ) e ON true",
        &[&after, &SETTLE_MS, &SCAN],
    )?;
    let Some(first) = rows.first() else {
        return Ok((after, false));
    };
    let (settled, newest): (i64, i64) = (first.get(0), first.get(1));
    let fresh: Vec<i64> = rows.iter().filter_map(|r| r.get(2)).collect();
    let mut through = after.max(settled);
    for &id in &fresh {
        if id != through + 1 {
            return Ok((through, true)); // a gap below an event of the last SETTLE_MS
        }
        through = id;
    }
    if fresh.len() as i64 >= SCAN {
        return Ok((through, true)); // more fresh ids than looked at: the rest next time
    }
    Ok((newest.max(after), false))
}

/// The newest settled event id (see `settled_through`): where a tail starts.
pub fn last_settled<C: GenericClient>(db: &mut Db<'_, C>) -> Result<(i64, bool)> {
    settled_through(db, 0)
}

/// Events of `queue` after id `after` (oldest first), as far as every id is settled; with
/// `group`, that group's own events. Also whether a gap held the read back.
pub fn read<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    group: Option<&str>,
    after: i64,
    limit: usize,
) -> Result<(Vec<Event>, bool)> {
    let (through, held) = settled_through(db, after)?;
    if through <= after {
        return Ok((Vec::new(), held));
    }
    let limit = limit as i64;
    let rows = match group {
        None => db.query(
            "SELECT id, at, queue, resource_group, task_id, kind, detail FROM events
             WHERE id > $2 AND id <= $4 AND queue = $1 ORDER BY id LIMIT $3",
            &[&queue, &after, &limit, &through],
        )?,
        Some(group) => db.query(
            "SELECT id, at, queue, resource_group, task_id, kind, detail FROM events
             WHERE id > $3 AND id <= $5 AND queue = $1 AND resource_group = $2
               AND task_id IS NULL
             ORDER BY id LIMIT $4",
            &[&queue, &group, &after, &limit, &through],
        )?,
    };
    Ok((rows.iter().map(event).collect(), held))
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
