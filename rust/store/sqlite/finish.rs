//! Changes to running tasks, each fenced by the lease token, and the rescuer. Every run
//! that ends reports a `RunEnd`: the groups' breakers and throttles, the task events and
//! (after commit) the metrics are fed from it.

use std::collections::HashSet;
use std::fmt::Write;

use rusqlite::{OptionalExtension, Transaction};

use super::events;
use super::history;
use super::json;
use super::resource_groups::{self, RunEnd, RunEndKind};
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::store::Lease;
use crate::task::{FailAction, FailureImpact, LeaseToken, Outcome, TaskId, TaskStatus};

/// The error stored on a task whose worker stopped heartbeating.
const LEASE_EXPIRED_ERROR: &str = r#"{"type":"LeaseExpired","message":"the worker running this task stopped heartbeating (crashed or was killed); its lease expired","traceback":null}"#;

/// Which task events a store writes to the events table: failures always (they are rare
/// and what operators tail), every transition only when asked (a row per transition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskEvents {
    #[default]
    Failures,
    All,
}

/// running -> completed, storing the result.
pub fn complete(
    tx: &Transaction<'_>,
    id: TaskId,
    token: LeaseToken,
    result: &[u8],
    events: TaskEvents,
    now: Millis,
) -> Result<RunEnd> {
    let (_, ends) = complete_many(tx, &[(id, token, result, None)], events, now)?;
    let end = ends.into_iter().next().ok_or(Error::LeaseLost(id))?;
    resource_groups::account(tx, std::slice::from_ref(&end), now)?;
    Ok(end)
}

/// running -> pending (retry after a delay, attempts left) or dead.
#[allow(clippy::too_many_arguments)]
pub fn fail(
    tx: &Transaction<'_>,
    id: TaskId,
    token: LeaseToken,
    error: &str,
    action: FailAction,
    impact: FailureImpact,
    run_us: Option<u64>,
    now: Millis,
) -> Result<RunEnd> {
    let end = fail_one(tx, id, token, error, action, impact, run_us, now)?;
    resource_groups::account(tx, std::slice::from_ref(&end), now)?;
    Ok(end)
}

/// `fail` without the group accounting (the batch does it once).
#[allow(clippy::too_many_arguments)]
fn fail_one(
    tx: &Transaction<'_>,
    id: TaskId,
    token: LeaseToken,
    error: &str,
    action: FailAction,
    impact: FailureImpact,
    run_us: Option<u64>,
    now: Millis,
) -> Result<RunEnd> {
    let retry_at = match action {
        FailAction::Retry { delay_ms } => Some(now + delay_ms.max(0)),
        FailAction::Dead => None,
    };
    // A rate limit is the resource's doing, not the task's: the attempt is given back.
    let refund = i64::from(impact.hold_ms.is_some() && retry_at.is_some());
    let row: Option<(Option<String>, i64, Millis, RunEnd)> = tx
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
             RETURNING lease_owner, attempts + ?6, run_at, id, status, queue, resource_group,
                       started_at",
        )?
        .query_row((id, token, error, retry_at, now, refund), |r| {
            let kind = RunEndKind::Failed {
                counts: impact.counts,
                hold_ms: impact.hold_ms,
            };
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                run_end(r, 3, kind, run_us)?,
            ))
        })
        .optional()?;
    let Some((worker, attempt, run_at, end)) = row else {
        return Err(Error::LeaseLost(id));
    };
    history::record_run_end(
        tx,
        id,
        end.started_at,
        worker.as_deref(),
        end.status,
        now,
        Some(error),
    )?;
    record_failure_events(tx, &end, attempt, run_at, error, now)?;
    Ok(end)
}

/// "failed" for the run, then "retried" or "dead" for what follows it.
fn record_failure_events(
    tx: &Transaction<'_>,
    end: &RunEnd,
    attempt: i64,
    run_at: Millis,
    error: &str,
    now: Millis,
) -> Result<()> {
    let failed = format!(r#"{{"attempt":{attempt},"error":{}}}"#, json::string(error));
    end.record_event(tx, "failed", &failed, now)?;
    match end.status {
        TaskStatus::Pending => {
            end.record_event(tx, "retried", &format!(r#"{{"run_at":{run_at}}}"#), now)
        }
        _ => end.record_event(tx, "dead", "{}", now),
    }
}

/// A finished run's facts from `id, status, queue, resource_group, started_at` at column
/// `first` of a RETURNING row.
fn run_end(
    r: &rusqlite::Row<'_>,
    first: usize,
    kind: RunEndKind,
    run_us: Option<u64>,
) -> rusqlite::Result<RunEnd> {
    Ok(RunEnd {
        task_id: r.get(first)?,
        status: r.get(first + 1)?,
        queue: r.get(first + 2)?,
        group: r.get(first + 3)?,
        started_at: r.get(first + 4)?,
        kind,
        run_us,
    })
}

/// Records each outcome; a lost lease is that outcome's answer, not the batch's. Also
/// returns the runs that ended.
pub fn finish_many(
    tx: &Transaction<'_>,
    outcomes: &[Outcome],
    events: TaskEvents,
    now: Millis,
) -> Result<(Vec<Result<TaskStatus>>, Vec<RunEnd>)> {
    let completions: Vec<(TaskId, LeaseToken, &[u8], Option<u64>)> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Completed {
                id,
                token,
                result,
                run_us,
            } => Some((*id, *token, result.as_slice(), *run_us)),
            Outcome::Failed { .. } => None,
        })
        .collect();
    let (completed, mut ends) = complete_many(tx, &completions, events, now)?;
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
                run_us,
            } => match fail_one(tx, *id, *token, error, *action, *impact, *run_us, now) {
                Err(Error::LeaseLost(id)) => Err(Error::LeaseLost(id)),
                Err(other) => return Err(other),
                Ok(end) => {
                    let status = end.status;
                    ends.push(end);
                    Ok(status)
                }
            },
        });
    }
    resource_groups::account(tx, &ends, now)?;
    Ok((answers, ends))
}

/// Completes many tasks with one set-based UPDATE (the batch goes in as JSON pairs), each
/// row fenced by its own token. Returns the ids whose lease still held, with their runs.
fn complete_many(
    tx: &Transaction<'_>,
    done: &[(TaskId, LeaseToken, &[u8], Option<u64>)],
    events: TaskEvents,
    now: Millis,
) -> Result<(HashSet<TaskId>, Vec<RunEnd>)> {
    if done.is_empty() {
        return Ok((HashSet::new(), Vec::new()));
    }
    let mut pairs = String::with_capacity(done.len() * 32);
    pairs.push('[');
    for (i, (id, token, _, _)) in done.iter().enumerate() {
        if i > 0 {
            pairs.push(',');
        }
        let _ = write!(pairs, "[{id},{token}]");
    }
    pairs.push(']');
    let mut ends: Vec<RunEnd> = tx
        .prepare_cached(
            "UPDATE tasks
             SET status = 'completed', finished_at = ?2, updated_at = ?2, progress = 1.0,
                 lease_token = NULL, lease_expires_at = NULL
             FROM (SELECT value ->> 0 AS id, value ->> 1 AS token FROM json_each(?1)) AS done
             WHERE tasks.id = done.id AND tasks.lease_token = done.token
               AND tasks.status = 'running'
             RETURNING tasks.id, tasks.status, tasks.queue, tasks.resource_group, tasks.started_at",
        )?
        .query_map((pairs, now), |r| run_end(r, 0, RunEndKind::Succeeded, None))?
        .collect::<rusqlite::Result<_>>()?;
    let ids: HashSet<TaskId> = ends.iter().map(|e| e.task_id).collect();
    let mut store_result = tx.prepare_cached(
        "INSERT OR REPLACE INTO task_results (task_id, result, created_at) VALUES (?1, ?2, ?3)",
    )?;
    let mut run_times = std::collections::HashMap::with_capacity(done.len());
    for (id, _, result, run_us) in done {
        // A JSON null result (most fire-and-forget tasks) is stored as no row: one B-tree
        // write fewer per completion, and reads give back None all the same.
        if ids.contains(id) && *result != b"null" {
            store_result.execute((id, result, now))?;
        }
        if let Some(us) = run_us {
            run_times.insert(*id, *us);
        }
    }
    for end in &mut ends {
        end.run_us = run_times.get(&end.task_id).copied();
        if events == TaskEvents::All {
            end.record_event(tx, "completed", "{}", now)?;
        }
    }
    // No history rows: a completed task's last run is in its started_at, finished_at and
    // lease_owner (`admin::history` derives both transitions).
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

/// Stores progress (and what the processor said with it) on a running task, and records a
/// "progress" event.
pub fn progress(
    tx: &Transaction<'_>,
    id: TaskId,
    token: LeaseToken,
    progress: f64,
    message: Option<&str>,
    now: Millis,
) -> Result<()> {
    let row: Option<(String, String)> = tx
        .prepare_cached(
            "UPDATE tasks SET progress = ?3, progress_message = ?4, updated_at = ?5
             WHERE id = ?1 AND lease_token = ?2 AND status = 'running'
             RETURNING queue, resource_group",
        )?
        .query_row((id, token, progress, message, now), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((queue, group)) = row else {
        return Err(Error::LeaseLost(id));
    };
    let detail = format!(
        r#"{{"progress":{progress},"message":{}}}"#,
        message.map_or_else(|| "null".to_string(), json::string)
    );
    events::record_task(tx, &queue, Some(&group), Some(id), "progress", &detail, now)
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
pub fn rescue(tx: &Transaction<'_>, queue: &str, now: Millis) -> Result<Vec<RunEnd>> {
    let rescued = tx
        .prepare_cached(
            "UPDATE tasks
             SET status = CASE WHEN attempts < max_attempts THEN 'pending' ELSE 'dead' END,
                 finished_at = CASE WHEN attempts < max_attempts THEN NULL ELSE ?2 END,
                 run_at = ?2, updated_at = ?2, last_error = ?3,
                 lease_token = NULL, lease_expires_at = NULL
             WHERE status = 'running' AND lease_expires_at <= ?2 AND queue = ?1
             RETURNING lease_owner, attempts, id, status, queue, resource_group, started_at",
        )?
        .query_map((queue, now, LEASE_EXPIRED_ERROR), |r| {
            // Not the resource's fault: a crashed worker does not count toward a breaker.
            let kind = RunEndKind::Failed {
                counts: false,
                hold_ms: None,
            };
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, i64>(1)?,
                run_end(r, 2, kind, None)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut ends = Vec::with_capacity(rescued.len());
    for (worker, attempt, end) in rescued {
        history::record_run_end(
            tx,
            end.task_id,
            end.started_at,
            worker.as_deref(),
            end.status,
            now,
            Some(LEASE_EXPIRED_ERROR),
        )?;
        record_failure_events(tx, &end, attempt, now, LEASE_EXPIRED_ERROR, now)?;
        ends.push(end);
    }
    Ok(ends)
}
