//! Workers' registrations (each renews `last_seen` while it runs) and the figures a health
//! check reads.

use rusqlite::{Connection, OptionalExtension, Transaction};

use crate::clock::Millis;
use crate::error::Result;
use crate::store::model::WorkerInfo;

/// Registers a worker, or renews it (`last_seen = now`).
pub fn worker_seen(tx: &Transaction<'_>, w: &WorkerInfo, now: Millis) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO workers (id, queue, hostname, pid, concurrency, pool, started_at, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
         ON CONFLICT (id) DO UPDATE SET last_seen = ?7, stopped_at = NULL",
    )?
    .execute((
        &w.id,
        &w.queue,
        &w.hostname,
        w.pid,
        w.concurrency,
        &w.pool,
        now,
    ))?;
    Ok(())
}

/// Marks a worker stopped (it exited cleanly).
pub fn worker_stopped(tx: &Transaction<'_>, id: &str, now: Millis) -> Result<()> {
    tx.prepare_cached("UPDATE workers SET stopped_at = ?2, last_seen = ?2 WHERE id = ?1")?
        .execute((id, now))?;
    Ok(())
}

/// Forgets workers not seen for `keep_ms` (stopped or vanished long ago).
pub fn prune_workers(tx: &Transaction<'_>, now: Millis, keep_ms: Millis) -> Result<u64> {
    let n = tx
        .prepare_cached("DELETE FROM workers WHERE last_seen < ?1")?
        .execute([now - keep_ms])?;
    Ok(n as u64)
}

/// Registered workers of `queue`, most recently seen first.
pub fn workers(conn: &Connection, queue: &str) -> Result<Vec<WorkerInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, queue, hostname, pid, concurrency, pool, started_at, last_seen, stopped_at,
             (SELECT count(*) FROM tasks INDEXED BY tasks_leases
              WHERE queue = w.queue AND status = 'running' AND lease_owner = w.id)
         FROM workers w WHERE queue = ?1 ORDER BY last_seen DESC",
    )?;
    let rows = stmt.query_map([queue], |r| {
        Ok(WorkerInfo {
            id: r.get(0)?,
            queue: r.get(1)?,
            hostname: r.get(2)?,
            pid: r.get(3)?,
            concurrency: r.get(4)?,
            pool: r.get(5)?,
            started_at: r.get(6)?,
            last_seen: r.get(7)?,
            stopped_at: r.get(8)?,
            running: r.get(9)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// When the longest-waiting task that is due now became due (`None`: nothing is due):
/// a ready task, or a delayed one that came due and no claim has moved yet (with no worker
/// running, nothing moves them, and they are the backlog this reports).
pub fn oldest_due(conn: &Connection, queue: &str, now: Millis) -> Result<Option<Millis>> {
    Ok(conn
        .prepare_cached(
            // The aggregate min skips a side that has none (the two-argument one would not).
            "SELECT min(due) FROM (
                 SELECT min(run_at) AS due FROM tasks INDEXED BY tasks_ready
                 WHERE queue = ?1 AND status = 'pending' AND run_at <= updated_at
                   AND run_at <= ?2
                 UNION ALL
                 SELECT min(run_at) FROM tasks INDEXED BY tasks_due
                 WHERE queue = ?1 AND status = 'pending' AND run_at > updated_at
                   AND run_at <= ?2)",
        )?
        .query_row((queue, now), |r| r.get(0))
        .optional()?
        .flatten())
}

/// Tasks of `queue` that went dead since `since`.
pub fn dead_since(conn: &Connection, queue: &str, since: Millis) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached(
            // The IN repeats the partial index's condition, so the planner may use it.
            "SELECT count(*) FROM tasks
             WHERE queue = ?1 AND status = 'dead' AND finished_at >= ?2
               AND status NOT IN ('pending', 'running')",
        )?
        .query_row((queue, since), |r| r.get(0))?;
    Ok(n as u64)
}
