//! The rescuer: takes over leases whose holder stopped renewing them, each fenced by its
//! token and by the expiry it watched (a renewal or a completion since then wins: unlike
//! River's rescuer, river#1302, this never overwrites a task that was just completed).

use std::collections::HashMap;

use postgres::GenericClient;

use super::finish::{Ended, record_failed_runs};
use super::history;
use super::pool::Db;
use crate::clock::Millis;
use crate::error::Result;
use crate::run_journal::RunState;
use crate::store::lease_watch::Sighting;
use crate::task::{RunEnd, RunEndKind, TaskStatus};

const WORKER_DIED_ERROR: &str = r#"{"type":"LeaseExpired","message":"worker died during run: the worker running this task stopped heartbeating (crashed or was killed) and its lease expired","traceback":null}"#;
const NO_JOURNAL_ERROR: &str = r#"{"type":"LeaseExpired","message":"the worker holding this task stopped heartbeating (crashed or was killed) and its lease expired; no run journal said whether it had started, so it counts as a run","traceback":null}"#;
const NOT_STARTED_ERROR: &str = r#"{"type":"LeaseExpired","message":"lease expired before start: the worker that claimed this task stopped heartbeating before running it; no attempt counted","traceback":null}"#;
const RETURNED_ERROR: &str = r#"{"type":"LeaseExpired","message":"lease expired after the run, before its outcome was recorded (the worker died first); no attempt counted","traceback":null}"#;

/// The running tasks of `queue` whose lease is past its midpoint at `now`, with holders.
pub fn lease_sightings<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    now: Millis,
) -> Result<Vec<(Sighting, String)>> {
    // For a running task updated_at is when its lease was last renewed (claim, heartbeat).
    Ok(db
        .query(
            "SELECT id, lease_token, lease_expires_at, updated_at, coalesce(lease_owner, '')
             FROM tasks
             WHERE queue = $1 AND status = 'running'
               AND lease_expires_at - (lease_expires_at - updated_at) / 2 <= $2",
            &[&queue, &now],
        )?
        .iter()
        .map(|r| {
            (
                Sighting {
                    id: r.get(0),
                    token: r.get(1),
                    expires_at: r.get(2),
                    renewed_at: r.get(3),
                },
                r.get(4),
            )
        })
        .collect())
}

/// The latest time a holder renewed a lease of `queue` (by its own clock).
pub fn latest_renewal<C: GenericClient>(db: &mut Db<'_, C>, queue: &str) -> Result<Option<Millis>> {
    Ok(db
        .query_opt(
            "SELECT updated_at FROM tasks WHERE queue = $1 AND status = 'running'
             ORDER BY lease_expires_at DESC LIMIT 1",
            &[&queue],
        )?
        .map(|r| r.get(0)))
}

/// For each holder in `owners` registered on a host other than `here`: the latest time
/// another worker of `queue` on its host, not stopped, was seen (by that host's clock).
pub fn siblings_seen<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    owners: &[String],
    here: &str,
) -> Result<HashMap<String, Millis>> {
    Ok(db
        .query(
            "SELECT o.id, max(s.last_seen) FROM workers o
             JOIN workers s ON s.hostname = o.hostname AND s.queue = o.queue AND s.id <> o.id
                           AND s.stopped_at IS NULL
             WHERE o.id = ANY($1) AND o.queue = $2 AND o.hostname <> $3
             GROUP BY o.id",
            &[&owners, &queue, &here],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// A lease the rescuer takes over, and what the run journals say of its run.
pub struct Overdue {
    pub lease: Sighting,
    pub run: RunState,
}

const CHARGED_SQL: &str = "UPDATE tasks
     SET status = CASE WHEN attempts < max_attempts THEN 'pending' ELSE 'dead' END,
         finished_at = CASE WHEN attempts < max_attempts THEN NULL ELSE $4::bigint END,
         run_at = $4, updated_at = $4, last_error = $5,
         lease_token = NULL, lease_expires_at = NULL
     WHERE id = $1 AND lease_token = $2 AND lease_expires_at = $3 AND status = 'running'
     RETURNING attempts, id, status, queue, resource_group, started_at, lease_owner, name";

const RETURNED_SQL: &str = "UPDATE tasks
     SET status = 'pending', attempts = greatest(attempts - 1, 0), run_at = $4, updated_at = $4,
         lease_token = NULL, lease_expires_at = NULL
     WHERE id = $1 AND lease_token = $2 AND lease_expires_at = $3 AND status = 'running'
     RETURNING attempts, id, status, queue, resource_group, started_at, lease_owner, name";

/// Takes over expired leases (see the SQLite engine's `finish::rescue`): a run that started,
/// or of which no journal knows, used its attempt; one that never started, or whose
/// processor returned, gets it back. Returns the runs that ended, each with whether it was
/// charged.
pub fn rescue<C: GenericClient>(
    db: &mut Db<'_, C>,
    overdue: &[Overdue],
    now: Millis,
) -> Result<Vec<(RunEnd, bool)>> {
    let mut charged = Vec::new();
    let mut ends = Vec::new();
    for o in overdue {
        let l = &o.lease;
        let (row, error, is_charged) = match o.run {
            RunState::Started | RunState::Unknown => {
                let error = if o.run == RunState::Started {
                    WORKER_DIED_ERROR
                } else {
                    NO_JOURNAL_ERROR
                };
                let row =
                    db.query_opt(CHARGED_SQL, &[&l.id, &l.token, &l.expires_at, &now, &error])?;
                (row, error, true)
            }
            RunState::NotStarted | RunState::Returned => {
                let error = if o.run == RunState::NotStarted {
                    NOT_STARTED_ERROR
                } else {
                    RETURNED_ERROR
                };
                let row = db.query_opt(RETURNED_SQL, &[&l.id, &l.token, &l.expires_at, &now])?;
                (row, error, false)
            }
        };
        let Some(row) = row else {
            continue; // renewed or finished since it was sighted
        };
        // Not the resource's fault: a crashed worker does not count toward a breaker.
        let end = RunEnd {
            task_id: row.get(1),
            status: TaskStatus::parse(row.get(2))?,
            queue: row.get(3),
            group: row.get(4),
            name: row.get(7),
            started_at: row.get(5),
            kind: RunEndKind::Failed {
                counts: false,
                hold_ms: None,
            },
            run_us: None,
        };
        let worker: Option<String> = row.get(6);
        if is_charged {
            charged.push(Ended {
                end: end.clone(),
                attempt: row.get(0),
                run_at: now,
                worker,
                error: error.to_string(),
            });
        } else {
            let rows: Vec<_> = history::run_end(
                end.task_id,
                end.started_at,
                worker.as_deref(),
                TaskStatus::Pending,
                now,
                Some(error),
            )
            .collect();
            history::append(db, &rows)?;
        }
        ends.push((end, is_charged));
    }
    record_failed_runs(db, &charged, now)?;
    Ok(ends)
}
