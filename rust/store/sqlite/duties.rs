//! The `duties` table: periodic work the workers of a queue share, each turn taken by one
//! process (see `Store::take_turn`).

use rusqlite::{OptionalExtension, Transaction};

use crate::clock::Millis;
use crate::error::Result;
use crate::store::model::TurnEvent;

use super::events;

/// Takes the turn of `duty` if its last turn is `every_ms` old (or it never had one):
/// the new fence and the state the last turn saved.
pub fn take(
    tx: &Transaction<'_>,
    queue: &str,
    duty: &str,
    every_ms: Millis,
    now: Millis,
) -> Result<Option<(i64, String)>> {
    let last: Option<(i64, Millis, String)> = tx
        .prepare_cached("SELECT fence, taken_at, state FROM duties WHERE queue = ?1 AND name = ?2")?
        .query_row((queue, duty), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let (fence, state) = match last {
        Some((_, taken_at, _)) if now - taken_at < every_ms && now >= taken_at => return Ok(None),
        Some((fence, _, state)) => (fence + 1, state),
        None => (1, "{}".to_string()),
    };
    tx.prepare_cached(
        "INSERT INTO duties (queue, name, fence, taken_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (queue, name) DO UPDATE SET fence = excluded.fence, taken_at = excluded.taken_at",
    )?
    .execute((queue, duty, fence, now))?;
    Ok(Some((fence, state)))
}

/// Saves the state of turn `fence` and records its events, unless a later turn was taken.
pub fn end(
    tx: &Transaction<'_>,
    queue: &str,
    duty: &str,
    fence: i64,
    state: &str,
    happened: &[TurnEvent],
    now: Millis,
) -> Result<bool> {
    let saved = tx
        .prepare_cached(
            "UPDATE duties SET state = ?4 WHERE queue = ?1 AND name = ?2 AND fence = ?3",
        )?
        .execute((queue, duty, fence, state))?;
    if saved == 0 {
        return Ok(false);
    }
    for e in happened {
        events::record(tx, queue, e.group.as_deref(), &e.kind, &e.detail, now)?;
    }
    Ok(true)
}
