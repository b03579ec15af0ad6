//! The events table: group and queue changes (circuit transitions, throttle changes,
//! pauses), in commit order, readable from any process by id.

use rusqlite::{Connection, Transaction};

use crate::clock::Millis;
use crate::error::Result;
use crate::resource_group::Event;

/// Appends one event in the caller's transaction.
pub fn record(
    tx: &Transaction<'_>,
    queue: &str,
    group: Option<&str>,
    kind: &str,
    detail: &str,
    now: Millis,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO events (at, queue, resource_group, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute((now, queue, group, kind, detail))?;
    Ok(())
}

/// Events of `queue` after id `after` (oldest first), optionally of one group only.
pub fn read(
    conn: &Connection,
    queue: &str,
    group: Option<&str>,
    after: i64,
    limit: usize,
) -> Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, queue, resource_group, task_id, kind, detail FROM events
         WHERE queue = ?1 AND (?2 IS NULL OR resource_group = ?2) AND id > ?3
         ORDER BY id LIMIT ?4",
    )?;
    let rows = stmt.query_map((queue, group, after, limit as i64), |r| {
        Ok(Event {
            id: r.get(0)?,
            at: r.get(1)?,
            queue: r.get(2)?,
            resource_group: r.get(3)?,
            task_id: r.get(4)?,
            kind: r.get(5)?,
            detail: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
