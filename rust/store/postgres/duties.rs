//! The `duties` table: periodic work the workers of a queue share, each turn taken by one
//! process across all hosts (see `Store::take_turn`).

use postgres::GenericClient;

use super::events;
use super::pool::Db;
use crate::clock::Millis;
use crate::error::Result;
use crate::store::model::TurnEvent;

/// Takes the turn of `duty` if its last turn is `every_ms` old (or it never had one): the
/// new fence and the state the last turn saved. The row lock serialises hosts racing for
/// the same turn: the second reads the first's `taken_at` and stands down.
pub fn take<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    duty: &str,
    every_ms: Millis,
    now: Millis,
) -> Result<Option<(i64, String)>> {
    db.execute(
        "INSERT INTO duties (queue, name, fence, taken_at) VALUES ($1, $2, 0, $3)
         ON CONFLICT (queue, name) DO NOTHING",
        &[&queue, &duty, &(now - every_ms)],
    )?;
    let row = db.query_one(
        "SELECT fence, taken_at, state FROM duties WHERE queue = $1 AND name = $2 FOR UPDATE",
        &[&queue, &duty],
    )?;
    let (fence, taken_at, state): (i64, Millis, String) = (row.get(0), row.get(1), row.get(2));
    if fence > 0 && now - taken_at < every_ms && now >= taken_at {
        return Ok(None);
    }
    db.execute(
        "UPDATE duties SET fence = $3, taken_at = $4 WHERE queue = $1 AND name = $2",
        &[&queue, &duty, &(fence + 1), &now],
    )?;
    Ok(Some((fence + 1, state)))
}

/// Saves the state of turn `fence` and records its events, unless a later turn was taken.
pub fn end<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    duty: &str,
    fence: i64,
    state: &str,
    happened: &[TurnEvent],
    now: Millis,
) -> Result<bool> {
    let saved = db.execute(
        "UPDATE duties SET state = $4 WHERE queue = $1 AND name = $2 AND fence = $3",
        &[&queue, &duty, &fence, &state],
    )?;
    if saved == 0 {
        return Ok(false);
    }
    record(db, queue, happened, now)?;
    Ok(true)
}

/// Records events of a queue (not of a task) in the caller's transaction.
pub fn record<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    happened: &[TurnEvent],
    now: Millis,
) -> Result<()> {
    for e in happened {
        events::record_task(db, queue, e.group.as_deref(), None, &e.kind, &e.detail, now)?;
    }
    Ok(())
}
