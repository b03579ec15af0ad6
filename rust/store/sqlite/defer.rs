//! Tasks a worker has no processor for. In a rolling deploy new code enqueues a task that
//! the workers still running old code cannot run; failing it there would kill work that a
//! new worker could do a minute later. So such a task is given back: pending again with the
//! claim's attempt returned, not claimable for a delay that doubles with each deferral in a
//! row (1 s, 2 s, 4 s ... at most 5 min, whichever worker defers it), and dead only once a
//! grace has passed since its first deferral in a row.
//!
//! The deferrals are counted from the task's history (each one is a `running -> pending`
//! row with a `NoProcessor` error), so the count needs no column and holds across workers:
//! a row of another kind (a run that ended otherwise, a requeue) starts a new count. Each
//! worker that defers a name also leaves one `no_processor` event of the queue, which
//! `ferroq status` reads.

use rusqlite::{OptionalExtension, Transaction};

use super::finish;
use super::history;
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::json;
use crate::policy::deferral::delay_ms;
use crate::store::model::{Deferral, NoProcessor, Unrunnable};
use crate::task::{FailAction, FailureImpact, RunEnd, TaskId, TaskStatus};

/// The error type of a deferral's history row (what the count looks for).
const NO_PROCESSOR: &str = "NoProcessor";

/// Gives back (or, past `grace_ms` since its first deferral in a row, kills) one running
/// task, fenced by its lease token. Returns what happened, and the run's end when it went
/// dead (for metrics).
pub fn defer(
    tx: &Transaction<'_>,
    task: &Unrunnable<'_>,
    grace_ms: Millis,
    now: Millis,
) -> Result<(Deferral, Option<RunEnd>)> {
    let row: Option<(String, String, Option<String>, Option<Millis>)> = tx
        .prepare_cached(
            "SELECT queue, name, lease_owner, started_at FROM tasks
             WHERE id = ?1 AND lease_token = ?2 AND status = 'running'",
        )?
        .query_row((task.id, task.token), |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((queue, name, worker, started_at)) = row else {
        return Err(Error::LeaseLost(task.id));
    };
    let (before, first) = streak(tx, task.id)?;
    if now - first.unwrap_or(now) >= grace_ms {
        // Not counted toward the group's breaker: the resource did nothing wrong.
        let impact = FailureImpact {
            counts: false,
            hold_ms: None,
        };
        let end = finish::fail(
            tx,
            task.id,
            task.token,
            task.error,
            FailAction::Dead,
            impact,
            None,
            now,
        )?;
        let deferral = Deferral {
            status: end.status,
            deferrals: before,
            run_at: now,
        };
        return Ok((deferral, Some(end)));
    }
    let n = before + 1;
    let run_at = now + delay_ms(n);
    // As `finish::release`, with a later run_at (so the task waits in tasks_due).
    tx.prepare_cached(
        "UPDATE tasks
         SET status = 'pending', attempts = max(attempts - 1, 0), run_at = ?3, updated_at = ?4,
             lease_token = NULL, lease_expires_at = NULL
         WHERE id = ?1 AND lease_token = ?2 AND status = 'running'",
    )?
    .execute((task.id, task.token, run_at, now))?;
    let worker = worker.unwrap_or_default();
    let message = format!(
        "worker {worker} has no processor for task {name:?}: given back without using an \
         attempt (deferral {n} in a row, claimable again in {}s)",
        delay_ms(n) / 1000
    );
    let error = format!(
        r#"{{"type":"{NO_PROCESSOR}","message":{},"traceback":null}}"#,
        json::string(&message)
    );
    history::record_run_end(
        tx,
        task.id,
        started_at,
        Some(&worker),
        TaskStatus::Pending,
        now,
        Some(&error),
    )?;
    note(tx, &queue, &name, &worker, now)?;
    Ok((
        Deferral {
            status: TaskStatus::Pending,
            deferrals: n,
            run_at,
        },
        None,
    ))
}

/// The deferrals of a task since the last history row of another kind (claims aside): how
/// many, and when the first was.
fn streak(tx: &Transaction<'_>, id: TaskId) -> Result<(i64, Option<Millis>)> {
    let pattern = format!(r#"{{"type":"{NO_PROCESSOR}",%"#);
    Ok(tx
        .prepare_cached(
            "SELECT count(*), min(at) FROM task_history
             WHERE task_id = ?1 AND error LIKE ?2
               AND id > coalesce((SELECT max(id) FROM task_history
                                  WHERE task_id = ?1 AND to_status <> 'running'
                                    AND (error IS NULL OR error NOT LIKE ?2)), 0)",
        )?
        .query_row((id, &pattern), |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// One `no_processor` event per (queue, task name, worker): a worker's later deferrals of
/// that name add none (and one is added again should retention have pruned it).
fn note(tx: &Transaction<'_>, queue: &str, name: &str, worker: &str, now: Millis) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO events (at, queue, resource_group, task_id, kind, detail)
         SELECT ?1, ?2, NULL, NULL, 'no_processor', json_object('task', ?3, 'worker', ?4)
         WHERE NOT EXISTS (
             SELECT 1 FROM events INDEXED BY events_by_group
             WHERE queue = ?2 AND resource_group IS NULL AND task_id IS NULL
               AND kind = 'no_processor' AND detail = json_object('task', ?3, 'worker', ?4))",
    )?
    .execute((now, queue, name, worker))?;
    Ok(())
}

/// Task names that workers seen since `alive_since` (and not stopped) deferred, with the
/// pending tasks of each name. Reads only the queue's own events (an index seek) unless
/// there are such names; then counts their pending tasks (through the pending indexes).
pub fn no_processor(
    conn: &rusqlite::Connection,
    queue: &str,
    alive_since: Millis,
) -> Result<Vec<NoProcessor>> {
    let pairs: Vec<(String, String)> = conn
        .prepare_cached(
            "SELECT DISTINCT e.detail ->> 'task', e.detail ->> 'worker'
             FROM events AS e INDEXED BY events_by_group
             JOIN workers AS w ON w.id = e.detail ->> 'worker'
             WHERE e.queue = ?1 AND e.resource_group IS NULL AND e.task_id IS NULL
               AND e.kind = 'no_processor' AND w.stopped_at IS NULL AND w.last_seen >= ?2
             ORDER BY 1, 2",
        )?
        .query_map((queue, alive_since), |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out: Vec<NoProcessor> = Vec::new();
    for (task, worker) in pairs {
        match out.last_mut() {
            Some(last) if last.task == task => last.workers.push(worker),
            _ => {
                let pending = pending_named(conn, queue, &task)?;
                out.push(NoProcessor {
                    task,
                    workers: vec![worker],
                    pending,
                });
            }
        }
    }
    Ok(out)
}

/// Pending tasks of one name (each pending index's arm repeats its condition, as `counts`).
fn pending_named(conn: &rusqlite::Connection, queue: &str, name: &str) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT (SELECT count(*) FROM tasks INDEXED BY tasks_ready
                     WHERE queue = ?1 AND status = 'pending' AND run_at <= updated_at
                       AND name = ?2)
                  + (SELECT count(*) FROM tasks INDEXED BY tasks_due
                     WHERE queue = ?1 AND status = 'pending' AND run_at > updated_at
                       AND name = ?2)",
        )?
        .query_row((queue, name), |r| r.get(0))?;
    Ok(n as u64)
}
