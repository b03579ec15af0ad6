//! Changes to running tasks, each fenced by the lease token, and the rescuer.

use rusqlite::{OptionalExtension, Transaction};

use super::history;
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::store::Lease;
use crate::task::{FailAction, LeaseToken, Outcome, TaskId, TaskStatus};

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
    let worker: Option<Option<String>> = tx
        .prepare_cached(
            "UPDATE tasks
             SET status = 'completed', finished_at = ?3, updated_at = ?3, progress = 1.0,
                 lease_token = NULL, lease_expires_at = NULL
             WHERE id = ?1 AND lease_token = ?2 AND status = 'running'
             RETURNING lease_owner",
        )?
        .query_row((id, token, now), |r| r.get(0))
        .optional()?;
    let Some(worker) = worker else {
        return Err(Error::LeaseLost(id));
    };
    // A JSON null result (most fire-and-forget tasks) is stored as no row: one B-tree write
    // fewer per completion, and reads give back None all the same.
    if result != b"null" {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO task_results (task_id, result, created_at) VALUES (?1, ?2, ?3)",
        )?
        .execute((id, result, now))?;
    }
    history::record(
        tx,
        id,
        Some(TaskStatus::Running),
        TaskStatus::Completed,
        now,
        worker.as_deref(),
        None,
    )
}

/// running -> pending (retry after a delay, attempts left) or dead.
pub fn fail(
    tx: &Transaction<'_>,
    id: TaskId,
    token: LeaseToken,
    error: &str,
    action: FailAction,
    now: Millis,
) -> Result<TaskStatus> {
    let retry_at = match action {
        FailAction::Retry { delay_ms } => Some(now + delay_ms.max(0)),
        FailAction::Dead => None,
    };
    let row: Option<(TaskStatus, Option<String>)> = tx
        .prepare_cached(
            "UPDATE tasks
             SET status = CASE WHEN ?4 IS NOT NULL AND attempts < max_attempts
                               THEN 'pending' ELSE 'dead' END,
                 run_at = coalesce(CASE WHEN attempts < max_attempts THEN ?4 END, run_at),
                 finished_at = CASE WHEN ?4 IS NOT NULL AND attempts < max_attempts
                                    THEN NULL ELSE ?5 END,
                 last_error = ?3, updated_at = ?5, lease_token = NULL, lease_expires_at = NULL
             WHERE id = ?1 AND lease_token = ?2 AND status = 'running'
             RETURNING status, lease_owner",
        )?
        .query_row((id, token, error, retry_at, now), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((status, worker)) = row else {
        return Err(Error::LeaseLost(id));
    };
    history::record(
        tx,
        id,
        Some(TaskStatus::Running),
        status,
        now,
        worker.as_deref(),
        Some(error),
    )?;
    Ok(status)
}

/// Records each outcome; a lost lease is that outcome's answer, not the batch's.
pub fn finish_many(
    tx: &Transaction<'_>,
    outcomes: &[Outcome],
    now: Millis,
) -> Result<Vec<Result<TaskStatus>>> {
    let mut answers = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        let answer = match outcome {
            Outcome::Completed { id, token, result } => {
                complete(tx, *id, *token, result, now).map(|()| TaskStatus::Completed)
            }
            Outcome::Failed {
                id,
                token,
                error,
                action,
            } => fail(tx, *id, *token, error, *action, now),
        };
        match answer {
            Err(Error::LeaseLost(id)) => answers.push(Err(Error::LeaseLost(id))),
            Err(other) => return Err(other),
            Ok(status) => answers.push(Ok(status)),
        }
    }
    Ok(answers)
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
    let worker: Option<Option<String>> = tx
        .prepare_cached(
            "UPDATE tasks
             SET status = 'pending', attempts = max(attempts - 1, 0), run_at = ?3, updated_at = ?3,
                 lease_token = NULL, lease_expires_at = NULL
             WHERE id = ?1 AND lease_token = ?2 AND status = 'running'
             RETURNING lease_owner",
        )?
        .query_row((id, token, now), |r| r.get(0))
        .optional()?;
    let Some(worker) = worker else {
        return Err(Error::LeaseLost(id));
    };
    history::record(
        tx,
        id,
        Some(TaskStatus::Running),
        TaskStatus::Pending,
        now,
        worker.as_deref(),
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
             RETURNING id, status, lease_owner",
        )?
        .query_map((queue, now, LEASE_EXPIRED_ERROR), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, TaskStatus>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (id, status, worker) in &rescued {
        history::record(
            tx,
            *id,
            Some(TaskStatus::Running),
            *status,
            now,
            worker.as_deref(),
            Some(LEASE_EXPIRED_ERROR),
        )?;
    }
    Ok(rescued
        .into_iter()
        .map(|(id, status, _)| (id, status))
        .collect())
}
