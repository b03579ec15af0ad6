//! Changes to running tasks, each fenced by the lease token, and the rescuer.

use std::collections::HashSet;
use std::fmt::Write;

use rusqlite::{OptionalExtension, Transaction};

use super::history;
use super::resource_groups::{self, RunEnd, RunEndKind};
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::store::Lease;
use crate::task::{FailAction, FailureImpact, LeaseToken, Outcome, TaskId, TaskStatus};

/// The error stored on a task whose worker stopped heartbeating.
const LEASE_EXPIRED_ERROR: &str = r#"{"type":"LeaseExpired","message":"the worker running this task stopped heartbeating (crashed or was killed); its lease expired","traceback":null}"#;

/// running -> completed, storing the result.
pub fn complete(
    tx: &Transaction<'_>,
    id: TaskId,
    token: LeaseToken,
    result: &[u8],
    now: Millis,
) -> Result<()> {
    let end: Option<RunEnd> = tx
        .prepare_cached(
            "UPDATE tasks
             SET status = 'completed', finished_at = ?3, updated_at = ?3, progress = 1.0,
                 lease_token = NULL, lease_expires_at = NULL
             WHERE id = ?1 AND lease_token = ?2 AND status = 'running'
             RETURNING queue, resource_group, started_at",
        )?
        .query_row((id, token, now), |r| run_end(r, 0, RunEndKind::Succeeded))
        .optional()?;
    let Some(end) = end else {
        return Err(Error::LeaseLost(id));
    };
    resource_groups::account(tx, &[end], now)?;
    // A JSON null result (most fire-and-forget tasks) is stored as no row: one B-tree write
    // fewer per completion, and reads give back None all the same.
    if result != b"null" {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO task_results (task_id, result, created_at) VALUES (?1, ?2, ?3)",
        )?
        .execute((id, result, now))?;
    }
    // No history row: a completed task's last run is in its started_at, finished_at and
    // lease_owner (`admin::history` derives both transitions).
    Ok(())
}

/// running -> pending (retry after a delay, attempts left) or dead.
pub fn fail(
    tx: &Transaction<'_>,
    id: TaskId,
    token: LeaseToken,
    error: &str,
    action: FailAction,
    impact: FailureImpact,
    now: Millis,
) -> Result<TaskStatus> {
    let (status, end) = fail_one(tx, id, token, error, action, impact, now)?;
    resource_groups::account(tx, &[end], now)?;
    Ok(status)
}

/// `fail` without the group accounting (the batch does it once).
fn fail_one(
    tx: &Transaction<'_>,
    id: TaskId,
    token: LeaseToken,
    error: &str,
    action: FailAction,
    impact: FailureImpact,
    now: Millis,
) -> Result<(TaskStatus, RunEnd)> {
    let retry_at = match action {
        FailAction::Retry { delay_ms } => Some(now + delay_ms.max(0)),
        FailAction::Dead => None,
    };
    // A rate limit is the resource's doing, not the task's: the attempt is given back.
    let refund = i64::from(impact.hold_ms.is_some() && retry_at.is_some());
    let row: Option<(TaskStatus, Option<String>, RunEnd)> = tx
        .prepare_cached(
            "UPDATE tasks
             SET status = CASE WHEN ?4 IS NOT NULL AND attempts - ?6 < max_attempts
                               THEN 'pending' ELSE 'dead' END,
                 run_at = coalesce(CASE WHEN attempts - ?6 < max_attempts THEN ?4 END, run_at),
                 finished_at = CASE WHEN ?4 IS NOT NULL AND attempts - ?6 < max_attempts
                                    THEN NULL ELSE ?5 END,
                 attempts = attempts - ?6,
                 last_error = ?3, updated_at = ?5, lease_token = NULL, lease_expires_at = NULL
             WHERE id = ?1 AND lease_token = ?2 AND status = 'running'
             RETURNING status, lease_owner, queue, resource_group, started_at",
        )?
        .query_row((id, token, error, retry_at, now, refund), |r| {
            let kind = RunEndKind::Failed {
                counts: impact.counts,
                hold_ms: impact.hold_ms,
            };
            Ok((r.get(0)?, r.get(1)?, run_end(r, 2, kind)?))
        })
        .optional()?;
    let Some((status, worker, end)) = row else {
        return Err(Error::LeaseLost(id));
    };
    history::record_run_end(
        tx,
        id,
        end.started_at,
        worker.as_deref(),
        status,
        now,
        Some(error),
    )?;
    Ok((status, end))
}

/// The group-facing facts of a finished run, from `queue, resource_group, started_at`
/// at column `first` of a RETURNING row.
fn run_end(r: &rusqlite::Row<'_>, first: usize, kind: RunEndKind) -> rusqlite::Result<RunEnd> {
    Ok(RunEnd {
        queue: r.get(first)?,
        group: r.get(first + 1)?,
        started_at: r.get(first + 2)?,
        kind,
    })
}

/// Records each outcome; a lost lease is that outcome's answer, not the batch's.
pub fn finish_many(
    tx: &Transaction<'_>,
    outcomes: &[Outcome],
    now: Millis,
) -> Result<Vec<Result<TaskStatus>>> {
    let completions: Vec<(TaskId, LeaseToken, &[u8])> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Completed { id, token, result } => Some((*id, *token, result.as_slice())),
            Outcome::Failed { .. } => None,
        })
        .collect();
    let (completed, mut ends) = complete_many(tx, &completions, now)?;
    let mut answers = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        answers.push(match outcome {
            Outcome::Completed { id, .. } if completed.contains(id) => Ok(TaskStatus::Completed),
            Outcome::Completed { id, .. } => Err(Error::LeaseLost(*id)),
            Outcome::Failed {
                id,
                token,
                error,
                action,
                impact,
            } => match fail_one(tx, *id, *token, error, *action, *impact, now) {
                Err(Error::LeaseLost(id)) => Err(Error::LeaseLost(id)),
                Err(other) => return Err(other),
                Ok((status, end)) => {
                    ends.push(end);
                    Ok(status)
                }
            },
        });
    }
    resource_groups::account(tx, &ends, now)?;
    Ok(answers)
}

/// Completes many tasks with one set-based UPDATE (the batch goes in as JSON pairs), each
/// row fenced by its own token. Returns the ids whose lease still held, with their runs.
fn complete_many(
    tx: &Transaction<'_>,
    done: &[(TaskId, LeaseToken, &[u8])],
    now: Millis,
) -> Result<(HashSet<TaskId>, Vec<RunEnd>)> {
    if done.is_empty() {
        return Ok((HashSet::new(), Vec::new()));
    }
    let mut pairs = String::with_capacity(done.len() * 32);
    pairs.push('[');
    for (i, (id, token, _)) in done.iter().enumerate() {
        if i > 0 {
            pairs.push(',');
        }
        let _ = write!(pairs, "[{id},{token}]");
    }
    pairs.push(']');
    let finished: Vec<(TaskId, RunEnd)> = tx
        .prepare_cached(
            "UPDATE tasks
             SET status = 'completed', finished_at = ?2, updated_at = ?2, progress = 1.0,
                 lease_token = NULL, lease_expires_at = NULL
             FROM (SELECT value ->> 0 AS id, value ->> 1 AS token FROM json_each(?1)) AS done
             WHERE tasks.id = done.id AND tasks.lease_token = done.token
               AND tasks.status = 'running'
             RETURNING tasks.id, tasks.queue, tasks.resource_group, tasks.started_at",
        )?
        .query_map((pairs, now), |r| {
            Ok((r.get(0)?, run_end(r, 1, RunEndKind::Succeeded)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let ids: HashSet<TaskId> = finished.iter().map(|(id, _)| *id).collect();
    let mut store_result = tx.prepare_cached(
        "INSERT OR REPLACE INTO task_results (task_id, result, created_at) VALUES (?1, ?2, ?3)",
    )?;
    for (id, _, result) in done {
        // A JSON null result is stored as no row (see `complete`).
        if ids.contains(id) && *result != b"null" {
            store_result.execute((id, result, now))?;
        }
    }
    // No history rows (see `complete`).
    let ends = finished.into_iter().map(|(_, end)| end).collect();
    Ok((ids, ends))
}

/// Extends every lease still held.
pub fn heartbeat(
    tx: &Transaction<'_>,
    leases: &[Lease],
    now: Millis,
    expires_at: Millis,
) -> Result<Vec<bool>> {
    let mut stmt = tx.prepare_cached(
        "UPDATE tasks SET lease_expires_at = ?3, updated_at = ?4
         WHERE id = ?1 AND lease_token = ?2 AND status = 'running'",
    )?;
    leases
        .iter()
        .map(|(id, token)| Ok(stmt.execute((id, token, expires_at, now))? == 1))
        .collect()
}

/// Stores progress of a running task.
pub fn progress(
    tx: &Transaction<'_>,
    id: TaskId,
    token: LeaseToken,
    progress: f64,
    now: Millis,
) -> Result<()> {
    let changed = tx
        .prepare_cached(
            "UPDATE tasks SET progress = ?3, updated_at = ?4
             WHERE id = ?1 AND lease_token = ?2 AND status = 'running'",
        )?
        .execute((id, token, progress, now))?;
    if changed == 0 {
        Err(Error::LeaseLost(id))
    } else {
        Ok(())
    }
}

/// running -> pending now, giving back the attempt the claim counted.
pub fn release(tx: &Transaction<'_>, id: TaskId, token: LeaseToken, now: Millis) -> Result<()> {
    let row: Option<(Option<String>, Option<Millis>)> = tx
        .prepare_cached(
            "UPDATE tasks
             SET status = 'pending', attempts = max(attempts - 1, 0), run_at = ?3, updated_at = ?3,
                 lease_token = NULL, lease_expires_at = NULL
             WHERE id = ?1 AND lease_token = ?2 AND status = 'running'
             RETURNING lease_owner, started_at",
        )?
        .query_row((id, token, now), |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((worker, started_at)) = row else {
        return Err(Error::LeaseLost(id));
    };
    history::record_run_end(
        tx,
        id,
        started_at,
        worker.as_deref(),
        TaskStatus::Pending,
        now,
        Some(
            r#"{"type":"Released","message":"released by its worker at shutdown","traceback":null}"#,
        ),
    )
}

/// Returns tasks whose lease expired: pending again, or dead if their attempts are used up.
pub fn rescue(tx: &Transaction<'_>, queue: &str, now: Millis) -> Result<Vec<(TaskId, TaskStatus)>> {
    let rescued = tx
        .prepare_cached(
            "UPDATE tasks
             SET status = CASE WHEN attempts < max_attempts THEN 'pending' ELSE 'dead' END,
                 finished_at = CASE WHEN attempts < max_attempts THEN NULL ELSE ?2 END,
                 run_at = ?2, updated_at = ?2, last_error = ?3,
                 lease_token = NULL, lease_expires_at = NULL
             WHERE status = 'running' AND lease_expires_at <= ?2 AND queue = ?1
             RETURNING id, status, lease_owner, started_at",
        )?
        .query_map((queue, now, LEASE_EXPIRED_ERROR), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, TaskStatus>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<Millis>>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (id, status, worker, started_at) in &rescued {
        history::record_run_end(
            tx,
            *id,
            *started_at,
            worker.as_deref(),
            *status,
            now,
            Some(LEASE_EXPIRED_ERROR),
        )?;
    }
    Ok(rescued
        .into_iter()
        .map(|(id, status, _, _)| (id, status))
        .collect())
}
