//! Changes to running tasks, each fenced by its lease token: set-based (one statement for a
//! batch, `UPDATE ... FROM unnest(ids, tokens, ...)`), so a row whose lease changed hands is
//! simply not matched and that outcome answers `LeaseLost`.

use std::collections::{HashMap, HashSet};

use postgres::GenericClient;

use super::events;
use super::history;
use super::pool::Db;
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::json;
use crate::store::{Lease, TaskEvents};
use crate::task::{
    FailAction, FailureImpact, LeaseToken, Outcome, RunEnd, RunEndKind, TaskId, TaskStatus,
};

fn status(text: &str) -> TaskStatus {
    TaskStatus::parse(text).unwrap_or(TaskStatus::Dead)
}

/// Records each outcome; a lost lease is that outcome's answer, not the batch's. Also
/// returns the runs that ended.
pub fn finish_many<C: GenericClient>(
    db: &mut Db<'_, C>,
    outcomes: &[Outcome],
    task_events: TaskEvents,
    channel: &str,
    now: Millis,
) -> Result<(Vec<Result<TaskStatus>>, Vec<RunEnd>)> {
    let completions = completions(outcomes);
    let done = complete_many(db, &completions, task_events, channel, now)?;
    let (completed, mut ends, mut limited) = (done.ids, done.ends, done.limited);
    // An id given twice is failed once: its other outcomes find the lease gone.
    let mut seen = HashSet::new();
    let failures: Vec<Failure> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Failed {
                id,
                token,
                error,
                action,
                impact,
                run_us,
            } if seen.insert(*id) => Some(Failure {
                id: *id,
                token: *token,
                error,
                action: *action,
                impact: *impact,
                run_us: *run_us,
            }),
            _ => None,
        })
        .collect();
    let failed = fail_many(db, &failures, now)?;
    let mut failed_status: HashMap<TaskId, TaskStatus> =
        failed.iter().map(|e| (e.task_id, e.status)).collect();
    let queues: std::collections::BTreeSet<&str> =
        failed.iter().map(|e| e.queue.as_str()).collect();
    for queue in queues {
        events::notify(db, channel, queue)?;
    }
    limited.extend(failed.iter().cloned());
    ends.extend(failed);
    let answers = outcomes
        .iter()
        .map(|outcome| match outcome {
            Outcome::Completed { id, .. } if completed.contains(id) => Ok(TaskStatus::Completed),
            Outcome::Completed { id, .. } => Err(Error::LeaseLost(*id)),
            // `remove`: a repeated id answers once.
            Outcome::Failed { id, .. } => failed_status.remove(id).ok_or(Error::LeaseLost(*id)),
        })
        .collect();
    super::groups::account(db, &limited, now)?;
    Ok((answers, ends))
}

/// The completions among `outcomes`.
fn completions(outcomes: &[Outcome]) -> Vec<(TaskId, LeaseToken, &[u8], Option<u64>)> {
    outcomes
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
        .collect()
}

/// A batch of completions alone, without task events: `COMPLETE_SQL` is atomic on its own,
/// so it runs outside a transaction (one round trip). Returns the answers, the runs that
/// ended, and those whose group has settings (to account for, `groups::account`).
pub fn complete_only<C: GenericClient>(
    db: &mut Db<'_, C>,
    outcomes: &[Outcome],
    channel: &str,
    now: Millis,
) -> Result<(Vec<Result<TaskStatus>>, Completed)> {
    let done = complete_many(
        db,
        &completions(outcomes),
        TaskEvents::Failures,
        channel,
        now,
    )?;
    let answers = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Completed { id, .. } if done.ids.contains(id) => Ok(TaskStatus::Completed),
            Outcome::Completed { id, .. } | Outcome::Failed { id, .. } => {
                Err(Error::LeaseLost(*id))
            }
        })
        .collect();
    Ok((answers, done))
}

/// What a batch of completions did.
pub struct Completed {
    pub ids: HashSet<TaskId>,
    pub ends: Vec<RunEnd>,
    /// The runs among `ends` whose group has settings (a breaker, a throttle...).
    pub limited: Vec<RunEnd>,
}

/// Completes a batch in one statement: the fenced UPDATE, the results (a JSON `null` result,
/// most fire-and-forget tasks, is stored as no row), a NOTIFY per queue (at commit), and
/// per run whether its group has settings.
const COMPLETE_SQL: &str = "WITH d AS MATERIALIZED (
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]) AS d(id, token, result)),
     u AS (
         UPDATE tasks t
         SET status = 'completed', finished_at = $4, updated_at = $4, progress = 1.0,
             lease_token = NULL, lease_expires_at = NULL
         FROM d WHERE t.id = d.id AND t.lease_token = d.token AND t.status = 'running'
         RETURNING t.id, t.queue, t.resource_group, t.started_at, t.name),
     r AS (
         INSERT INTO task_results (task_id, result, created_at)
         SELECT u.id, d.result, $4 FROM u JOIN d ON d.id = u.id WHERE d.result <> 'null'::bytea
         ON CONFLICT (task_id) DO UPDATE SET result = excluded.result,
                                            created_at = excluded.created_at),
     n AS (SELECT count(pg_notify($5, q.queue)) AS sent FROM (SELECT DISTINCT queue FROM u) q)
     SELECT u.id, u.queue, u.resource_group, u.started_at,
            EXISTS (SELECT 1 FROM resource_groups g
                    WHERE g.queue = u.queue AND g.resource_group = u.resource_group),
            u.name
     FROM u CROSS JOIN n";

fn complete_many<C: GenericClient>(
    db: &mut Db<'_, C>,
    done: &[(TaskId, LeaseToken, &[u8], Option<u64>)],
    task_events: TaskEvents,
    channel: &str,
    now: Millis,
) -> Result<Completed> {
    if done.is_empty() {
        return Ok(Completed {
            ids: HashSet::new(),
            ends: Vec::new(),
            limited: Vec::new(),
        });
    }
    // One row per id (the first outcome given for it), in id order: batches on other
    // connections lock rows in the same order, so they never deadlock.
    let mut rows: Vec<(TaskId, LeaseToken, &[u8])> = Vec::with_capacity(done.len());
    let mut seen = HashSet::new();
    for (id, token, result, _) in done {
        if seen.insert(*id) {
            rows.push((*id, *token, result));
        }
    }
    rows.sort_unstable_by_key(|r| r.0);
    let ids: Vec<TaskId> = rows.iter().map(|r| r.0).collect();
    let tokens: Vec<LeaseToken> = rows.iter().map(|r| r.1).collect();
    let results: Vec<&[u8]> = rows.iter().map(|r| r.2).collect();
    let run_times: HashMap<TaskId, u64> = done
        .iter()
        .filter_map(|(id, _, _, us)| us.map(|us| (*id, us)))
        .collect();
    let mut limited = Vec::new();
    let mut ends: Vec<RunEnd> = db
        .query(COMPLETE_SQL, &[&ids, &tokens, &results, &now, &channel])?
        .iter()
        .map(|r| {
            let id: TaskId = r.get(0);
            let end = RunEnd {
                task_id: id,
                status: TaskStatus::Completed,
                queue: r.get(1),
                group: r.get(2),
                name: r.get(5),
                started_at: r.get(3),
                kind: RunEndKind::Succeeded,
                run_us: run_times.get(&id).copied(),
            };
            if r.get::<_, bool>(4) {
                limited.push(end.clone());
            }
            end
        })
        .collect();
    ends.sort_unstable_by_key(|e| e.task_id);
    db.notified |= !ends.is_empty();
    if task_events == TaskEvents::All {
        for end in &ends {
            events::record_run(db, end, "completed", "{}", now)?;
        }
    }
    Ok(Completed {
        ids: ends.iter().map(|e| e.task_id).collect(),
        ends,
        limited,
    })
}

/// One failed run to record.
pub struct Failure<'a> {
    pub id: TaskId,
    pub token: LeaseToken,
    pub error: &'a str,
    pub action: FailAction,
    pub impact: FailureImpact,
    pub run_us: Option<u64>,
}

/// Fails one run (fenced) and feeds it to its group; `LeaseLost` if the lease changed.
pub fn fail_one<C: GenericClient>(
    db: &mut Db<'_, C>,
    failure: Failure<'_>,
    now: Millis,
) -> Result<RunEnd> {
    let id = failure.id;
    let end = fail_many(db, &[failure], now)?
        .pop()
        .ok_or(Error::LeaseLost(id))?;
    super::groups::account(db, std::slice::from_ref(&end), now)?;
    Ok(end)
}

/// 1 if the failure gives its attempt back: a rate limit is the resource's doing.
fn refund(f: &Failure) -> i64 {
    i64::from(f.impact.hold_ms.is_some() && matches!(f.action, FailAction::Retry { .. }))
}

const FAIL_SQL: &str = "WITH f AS MATERIALIZED (
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[])
              AS f(id, token, error, retry_at, refund))
     UPDATE tasks t
     SET status = CASE WHEN f.retry_at IS NOT NULL AND t.attempts - f.refund < t.max_attempts
                       THEN 'pending' ELSE 'dead' END,
         run_at = coalesce(CASE WHEN t.attempts - f.refund < t.max_attempts THEN f.retry_at END,
                           t.run_at),
         finished_at = CASE WHEN f.retry_at IS NOT NULL AND t.attempts - f.refund < t.max_attempts
                            THEN NULL ELSE $6::bigint END,
         attempts = t.attempts - f.refund,
         last_error = f.error, updated_at = $6, lease_token = NULL, lease_expires_at = NULL
     FROM f WHERE t.id = f.id AND t.lease_token = f.token AND t.status = 'running'
     RETURNING t.id, t.status, t.queue, t.resource_group, t.started_at, t.attempts, t.run_at,
               t.lease_owner, t.name";

/// A run that ended (failed or rescued) as its row was left, for history and events.
pub struct Ended {
    pub end: RunEnd,
    /// The run's number (attempts as counted when it was claimed).
    pub attempt: i64,
    pub run_at: Millis,
    pub worker: Option<String>,
    pub error: String,
}

/// Fails runs with one set-based UPDATE, each row fenced by its own token, then records
/// their history and events. `failures` must not repeat an id.
fn fail_many<C: GenericClient>(
    db: &mut Db<'_, C>,
    failures: &[Failure],
    now: Millis,
) -> Result<Vec<RunEnd>> {
    if failures.is_empty() {
        return Ok(Vec::new());
    }
    let mut sorted: Vec<&Failure> = failures.iter().collect();
    sorted.sort_unstable_by_key(|f| f.id);
    let ids: Vec<TaskId> = sorted.iter().map(|f| f.id).collect();
    let tokens: Vec<LeaseToken> = sorted.iter().map(|f| f.token).collect();
    let errors: Vec<&str> = sorted.iter().map(|f| f.error).collect();
    let retry_at: Vec<Option<Millis>> = sorted
        .iter()
        .map(|f| match f.action {
            FailAction::Retry { delay_ms } => Some(now + delay_ms.max(0)),
            FailAction::Dead => None,
        })
        .collect();
    let refunds: Vec<i64> = sorted.iter().map(|f| refund(f)).collect();
    let by_id: HashMap<TaskId, &Failure> = failures.iter().map(|f| (f.id, f)).collect();
    let rows = db.query(
        FAIL_SQL,
        &[&ids, &tokens, &errors, &retry_at, &refunds, &now],
    )?;
    let mut ended: Vec<Ended> = rows
        .iter()
        .map(|r| {
            let id: TaskId = r.get(0);
            let f = by_id[&id];
            let attempts: i64 = r.get(5);
            Ended {
                end: RunEnd {
                    task_id: id,
                    status: status(r.get(1)),
                    queue: r.get(2),
                    group: r.get(3),
                    name: r.get(8),
                    started_at: r.get(4),
                    kind: RunEndKind::Failed {
                        counts: f.impact.counts,
                        hold_ms: f.impact.hold_ms,
                    },
                    run_us: f.run_us,
                },
                // What a rate limit gave back still was this run's number.
                attempt: attempts + refund(f),
                run_at: r.get(6),
                worker: r.get(7),
                error: f.error.to_string(),
            }
        })
        .collect();
    // In the order given (history and events read in id order of their rows).
    let order: HashMap<TaskId, usize> = failures
        .iter()
        .enumerate()
        .map(|(i, f)| (f.id, i))
        .collect();
    ended.sort_unstable_by_key(|e| order[&e.end.task_id]);
    record_failed_runs(db, &ended, now)?;
    Ok(ended.into_iter().map(|e| e.end).collect())
}

/// The error as a JSON value: workers store a JSON object; anything else goes in as a string.
fn error_value(error: &str) -> String {
    let t = error.trim();
    if t.starts_with('{') && t.ends_with('}') {
        t.to_string()
    } else {
        json::string(error)
    }
}

/// History (each run's claim and end) and events ("failed", then "retried" or "dead") of
/// runs that just failed or were charged by a rescue, in order.
pub fn record_failed_runs<C: GenericClient>(
    db: &mut Db<'_, C>,
    runs: &[Ended],
    now: Millis,
) -> Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let rows: Vec<history::Row<'_>> = runs
        .iter()
        .flat_map(|r| {
            history::run_end(
                r.end.task_id,
                r.end.started_at,
                r.worker.as_deref(),
                r.end.status,
                now,
                Some(r.error.as_str()),
            )
        })
        .collect();
    history::append(db, &rows)?;
    let mut kinds = Vec::with_capacity(runs.len() * 2);
    let mut details = Vec::with_capacity(runs.len() * 2);
    let mut ids = Vec::with_capacity(runs.len() * 2);
    let mut queues = Vec::with_capacity(runs.len() * 2);
    let mut groups = Vec::with_capacity(runs.len() * 2);
    for r in runs {
        let failed = format!(
            r#"{{"attempt":{},"error":{}}}"#,
            r.attempt,
            error_value(&r.error)
        );
        let (kind, detail) = if r.end.status == TaskStatus::Pending {
            ("retried", format!(r#"{{"run_at":{}}}"#, r.run_at))
        } else {
            ("dead", "{}".to_string())
        };
        for (k, d) in [("failed", failed), (kind, detail)] {
            kinds.push(k);
            details.push(d);
            ids.push(r.end.task_id);
            queues.push(r.end.queue.as_str());
            groups.push(r.end.group.as_str());
        }
    }
    db.execute(
        "INSERT INTO events (at, queue, resource_group, task_id, kind, detail)
         SELECT $1, queue, grp, task_id, kind, detail
         FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
              WITH ORDINALITY AS u(queue, grp, task_id, kind, detail, ord)
         ORDER BY ord",
        &[&now, &queues, &groups, &ids, &kinds, &details],
    )?;
    Ok(())
}

/// Extends every lease still held; per lease, whether it was.
pub fn heartbeat<C: GenericClient>(
    db: &mut Db<'_, C>,
    leases: &[Lease],
    now: Millis,
    expires_at: Millis,
) -> Result<Vec<bool>> {
    let mut sorted: Vec<Lease> = leases.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let ids: Vec<TaskId> = sorted.iter().map(|l| l.0).collect();
    let tokens: Vec<LeaseToken> = sorted.iter().map(|l| l.1).collect();
    let held: HashSet<Lease> = db
        .query(
            "UPDATE tasks t SET lease_expires_at = $3, updated_at = $4
             FROM unnest($1::bigint[], $2::bigint[]) AS l(id, token)
             WHERE t.id = l.id AND t.lease_token = l.token AND t.status = 'running'
             RETURNING t.id, t.lease_token",
            &[&ids, &tokens, &expires_at, &now],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(leases.iter().map(|l| held.contains(l)).collect())
}

/// Stores progress on a running task, and records a "progress" event.
pub fn progress<C: GenericClient>(
    db: &mut Db<'_, C>,
    id: TaskId,
    token: LeaseToken,
    progress: f64,
    message: Option<&str>,
    now: Millis,
) -> Result<()> {
    // Not updated_at: for a running task it is when the lease was last renewed.
    let row = db.query_opt(
        "UPDATE tasks SET progress = $3, progress_message = $4
         WHERE id = $1 AND lease_token = $2 AND status = 'running'
         RETURNING queue, resource_group",
        &[&id, &token, &progress, &message],
    )?;
    let Some(row) = row else {
        return Err(Error::LeaseLost(id));
    };
    let (queue, group): (String, String) = (row.get(0), row.get(1));
    let detail = format!(
        r#"{{"progress":{progress},"message":{}}}"#,
        message.map_or_else(|| "null".to_string(), json::string)
    );
    events::record_task(db, &queue, Some(&group), Some(id), "progress", &detail, now)
}

const RELEASED_ERROR: &str =
    r#"{"type":"Released","message":"released by its worker at shutdown","traceback":null}"#;

/// running -> pending now, giving back the attempt the claim counted; returns the queue.
pub fn release<C: GenericClient>(
    db: &mut Db<'_, C>,
    id: TaskId,
    token: LeaseToken,
    now: Millis,
) -> Result<String> {
    let row = db.query_opt(
        "UPDATE tasks
         SET status = 'pending', attempts = greatest(attempts - 1, 0), run_at = $3,
             updated_at = $3, lease_token = NULL, lease_expires_at = NULL
         WHERE id = $1 AND lease_token = $2 AND status = 'running'
         RETURNING lease_owner, started_at, queue",
        &[&id, &token, &now],
    )?;
    let Some(row) = row else {
        return Err(Error::LeaseLost(id));
    };
    let worker: Option<String> = row.get(0);
    let rows: Vec<_> = history::run_end(
        id,
        row.get(1),
        worker.as_deref(),
        TaskStatus::Pending,
        now,
        Some(RELEASED_ERROR),
    )
    .collect();
    history::append(db, &rows)?;
    Ok(row.get(2))
}
