//! Tasks a worker has no processor for (a rolling deploy): given back without using an
//! attempt, claimable after a growing delay, dead once the grace since the first deferral
//! in a row is over (as the SQLite engine's `defer.rs`).

use postgres::GenericClient;

use super::finish::{self, Failure};
use super::history;
use super::pool::Db;
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::json;
use crate::policy::deferral::delay_ms;
use crate::store::{Deferral, NoProcessor, Unrunnable};
use crate::task::{FailAction, FailureImpact, RunEnd, TaskId, TaskStatus};

/// The error type a deferral stores (and that counts the deferrals in a row).
const NO_PROCESSOR: &str = "NoProcessor";

pub fn defer<C: GenericClient>(
    db: &mut Db<'_, C>,
    task: &Unrunnable<'_>,
    grace_ms: Millis,
    now: Millis,
) -> Result<(Deferral, Option<RunEnd>)> {
    let row = db.query_opt(
        "SELECT queue, name, lease_owner, started_at FROM tasks
         WHERE id = $1 AND lease_token = $2 AND status = 'running' FOR UPDATE",
        &[&task.id, &task.token],
    )?;
    let Some(row) = row else {
        return Err(Error::LeaseLost(task.id));
    };
    let (queue, name): (String, String) = (row.get(0), row.get(1));
    let worker: Option<String> = row.get(2);
    let started_at: Option<Millis> = row.get(3);
    let (before, first) = streak(db, task.id)?;
    if now - first.unwrap_or(now) >= grace_ms {
        let failure = Failure {
            id: task.id,
            token: task.token,
            error: task.error,
            action: FailAction::Dead,
            impact: FailureImpact {
                counts: false,
                hold_ms: None,
            },
            run_us: None,
        };
        let end = finish::fail_one(db, failure, now)?;
        let deferral = Deferral {
            status: end.status,
            deferrals: before,
            run_at: now,
        };
        return Ok((deferral, Some(end)));
    }
    let n = before + 1;
    let run_at = now + delay_ms(n);
    db.execute(
        "UPDATE tasks
         SET status = 'pending', attempts = greatest(attempts - 1, 0), run_at = $3,
             updated_at = $4, lease_token = NULL, lease_expires_at = NULL
         WHERE id = $1 AND lease_token = $2 AND status = 'running'",
        &[&task.id, &task.token, &run_at, &now],
    )?;
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
    let rows: Vec<_> = history::run_end(
        task.id,
        started_at,
        Some(&worker),
        TaskStatus::Pending,
        now,
        Some(&error),
    )
    .collect();
    history::append(db, &rows)?;
    note(db, &queue, &name, &worker, now)?;
    let deferral = Deferral {
        status: TaskStatus::Pending,
        deferrals: n,
        run_at,
    };
    Ok((deferral, None))
}

/// Deferrals in a row (since the last run that ended otherwise) and when the first was.
fn streak<C: GenericClient>(db: &mut Db<'_, C>, id: TaskId) -> Result<(i64, Option<Millis>)> {
    let pattern = format!(r#"{{"type":"{NO_PROCESSOR}",%"#);
    let r = db.query_one(
        "SELECT count(*), min(at) FROM task_history
         WHERE task_id = $1 AND error LIKE $2
           AND id > coalesce((SELECT max(id) FROM task_history
                              WHERE task_id = $1 AND to_status <> 'running'
                                AND (error IS NULL OR error NOT LIKE $2)), 0)",
        &[&id, &pattern],
    )?;
    Ok((r.get(0), r.get(1)))
}

/// Records once per (task name, worker) that the worker has no processor for it.
fn note<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    name: &str,
    worker: &str,
    now: Millis,
) -> Result<()> {
    let detail = format!(
        r#"{{"task":{},"worker":{}}}"#,
        json::string(name),
        json::string(worker)
    );
    db.execute(
        "INSERT INTO events (at, queue, resource_group, task_id, kind, detail)
         SELECT $1, $2, NULL, NULL, 'no_processor', $3
         WHERE NOT EXISTS (
             SELECT 1 FROM events
             WHERE queue = $2 AND resource_group IS NULL AND task_id IS NULL
               AND kind = 'no_processor' AND detail = $3)",
        &[&now, &queue, &detail],
    )?;
    Ok(())
}

/// Task names live workers deferred, with those workers and the pending tasks of each name.
pub fn no_processor<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    alive_since: Millis,
) -> Result<Vec<NoProcessor>> {
    let pairs: Vec<(String, String)> = db
        .query(
            "SELECT DISTINCT e.detail::jsonb ->> 'task', e.detail::jsonb ->> 'worker'
             FROM events e JOIN workers w ON w.id = e.detail::jsonb ->> 'worker'
             WHERE e.queue = $1 AND e.resource_group IS NULL AND e.task_id IS NULL
               AND e.kind = 'no_processor' AND w.stopped_at IS NULL AND w.last_seen >= $2
             ORDER BY 1, 2",
            &[&queue, &alive_since],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut out: Vec<NoProcessor> = Vec::new();
    for (task, worker) in pairs {
        match out.last_mut() {
            Some(last) if last.task == task => last.workers.push(worker),
            _ => {
                let n: i64 = db
                    .query_one(
                        "SELECT count(*) FROM tasks
                         WHERE queue = $1 AND status = 'pending' AND name = $2",
                        &[&queue, &task],
                    )?
                    .get(0);
                out.push(NoProcessor {
                    task,
                    workers: vec![worker],
                    pending: n as u64,
                });
            }
        }
    }
    Ok(out)
}
