//! The events table: group and queue changes (circuit transitions, throttle changes,
//! pauses), in commit order, readable from any process by id.

use rusqlite::{Connection, Transaction};

use crate::clock::Millis;
use crate::error::Result;
use crate::json;
use crate::resource_group::Event;
use crate::task::{RunEnd, TaskId};

/// Appends one event of a group or queue in the caller's transaction.
pub fn record(
    tx: &Transaction<'_>,
    queue: &str,
    group: Option<&str>,
    kind: &str,
    detail: &str,
    now: Millis,
) -> Result<()> {
    record_task(tx, queue, group, None, kind, detail, now)
}

/// Appends one event of the task of run `end`.
pub fn record_run(
    tx: &Transaction<'_>,
    end: &RunEnd,
    kind: &str,
    detail: &str,
    now: Millis,
) -> Result<()> {
    let group = Some(end.group.as_str());
    record_task(tx, &end.queue, group, Some(end.task_id), kind, detail, now)
}

/// Appends one event (of a task when `task_id` is given) in the caller's transaction.
pub fn record_task(
    tx: &Transaction<'_>,
    queue: &str,
    group: Option<&str>,
    task_id: Option<TaskId>,
    kind: &str,
    detail: &str,
    now: Millis,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO events (at, queue, resource_group, task_id, kind, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute((now, queue, group, task_id, kind, detail))?;
    Ok(())
}

/// Deletes events older than `before`, at most `limit`; returns how many.
pub fn prune(tx: &Transaction<'_>, before: Millis, limit: usize) -> Result<u64> {
    let n = tx
        .prepare_cached(
            "DELETE FROM events WHERE id IN
                 (SELECT id FROM events WHERE at < ?1 ORDER BY id LIMIT ?2)",
        )?
        .execute((before, limit as i64))?;
    Ok(n as u64)
}

/// A tail (dashboards, `watch_events`): a primary-key range from the cursor.
const READ_SQL: &str = "SELECT id, at, queue, resource_group, task_id, kind, detail FROM events
     WHERE id > ?3 AND queue = ?1 AND ?2 IS NULL ORDER BY id LIMIT ?4";
const READ_GROUP_SQL: &str = "SELECT id, at, queue, resource_group, task_id, kind, detail
     FROM events
     WHERE queue = ?1 AND resource_group = ?2 AND task_id IS NULL AND id > ?3
     ORDER BY id LIMIT ?4";
const LATEST_SQL: &str = "SELECT id, at, queue, resource_group, task_id, kind, detail FROM events
     WHERE id <= ?3 AND queue = ?1
       AND (?2 IS NULL OR kind IN (SELECT value FROM json_each(?2)))
     ORDER BY id DESC LIMIT ?4";

/// Events of `queue` after id `after` (oldest first); with `group`, that group's own events
/// (circuit, throttle, pause), not its tasks'.
pub fn read(
    conn: &Connection,
    queue: &str,
    group: Option<&str>,
    after: i64,
    limit: usize,
) -> Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(match group {
        None => READ_SQL,
        Some(_) => READ_GROUP_SQL,
    })?;
    let rows = stmt.query_map((queue, group, after, limit as i64), event)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The newest `limit` events of `queue` up to id `up_to` of the given kinds (all if none),
/// oldest first. The kinds are filtered in the query, before the limit: the last 20 "dead"
/// events, not the "dead" ones among the last 20.
pub fn latest(
    conn: &Connection,
    queue: &str,
    kinds: &[String],
    up_to: i64,
    limit: usize,
) -> Result<Vec<Event>> {
    let kinds = (!kinds.is_empty()).then(|| json::strings(kinds.iter().map(|k| k.as_str())));
    let mut stmt = conn.prepare_cached(LATEST_SQL)?;
    let rows = stmt.query_map((queue, kinds, up_to, limit as i64), event)?;
    let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    out.reverse();
    Ok(out)
}

fn event(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: r.get(0)?,
        at: r.get(1)?,
        queue: r.get(2)?,
        resource_group: r.get(3)?,
        task_id: r.get(4)?,
        kind: r.get(5)?,
        detail: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::query_plan as plan;

    /// The dashboard's live tail and its events page read from a cursor on the primary key
    /// (or a group's own index), never the whole table, and never sort.
    #[test]
    fn event_reads_are_ranges_without_sorting() {
        for (name, p) in [
            ("tail", plan(super::READ_SQL, ("q", None::<String>, 5, 10))),
            ("group", plan(super::READ_GROUP_SQL, ("q", "g", 5, 10))),
            (
                "latest",
                plan(super::LATEST_SQL, ("q", None::<String>, 5, 10)),
            ),
        ] {
            assert!(
                p.contains("INTEGER PRIMARY KEY (rowid") || p.contains("INDEX events_by_group"),
                "{name}: {p}"
            );
            assert!(!p.contains("TEMP B-TREE"), "{name}: {p}");
        }
    }
}
