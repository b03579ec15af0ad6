//! The claim: the best ready tasks, locked with `FOR UPDATE SKIP LOCKED` (claimers on other
//! hosts skip each other's rows instead of waiting) inside a `MATERIALIZED` CTE (else the
//! planner may run the LIMIT subquery more than once and lease more than it meant to), then
//! leased in the same statement.

use postgres::GenericClient;

use super::events;
use super::pool::Db;
use super::unsupported::not_yet;
use crate::clock::Millis;
use crate::error::Result;
use crate::json;
use crate::store::TaskEvents;
use crate::task::{ClaimedTask, LeaseToken};

/// Moves delayed tasks that came due into `tasks_ready` (updated_at = now makes
/// `run_at <= updated_at` true), earliest first, at most `$3` a claim.
const PROMOTE_SQL: &str = "UPDATE tasks SET updated_at = $2
     WHERE id IN (SELECT id FROM tasks
                  WHERE queue = $1 AND status = 'pending' AND run_at > updated_at
                    AND run_at <= $2
                  ORDER BY run_at LIMIT $3 FOR UPDATE SKIP LOCKED)";

/// Most delayed tasks one claim makes ready (more if it asks for more), as in SQLite.
const PROMOTE_MAX: usize = 5_000;

/// `run_at <= updated_at` repeats the index's condition (the planner uses a partial index
/// only for a query that implies it); `run_at <= $4` still guards against a clock behind
/// the enqueuer's.
const CLAIM_SQL: &str = "WITH c AS MATERIALIZED (
         SELECT id FROM tasks
         WHERE queue = $1 AND status = 'pending' AND run_at <= updated_at AND run_at <= $4
         ORDER BY priority DESC, id
         LIMIT $6
         FOR UPDATE SKIP LOCKED)
     UPDATE tasks t
     SET status = 'running', attempts = t.attempts + 1, lease_owner = $2, lease_token = $3,
         lease_expires_at = $5, started_at = $4, updated_at = $4, progress = NULL,
         progress_message = NULL
     FROM c WHERE t.id = c.id
     RETURNING t.id, t.name, t.resource_group, t.priority, t.attempts, t.max_attempts,
               t.created_at, t.run_at,
               coalesce((SELECT payload FROM task_payloads p WHERE p.task_id = t.id), ''::bytea)";

/// What a claim hands out and on what terms.
pub struct Lease<'a> {
    pub worker: &'a str,
    pub limit: usize,
    pub now: Millis,
    pub expires_at: Millis,
    pub token: LeaseToken,
    pub task_events: TaskEvents,
}

/// Leases up to `lease.limit` ready tasks, highest priority first, FIFO within a priority.
pub fn claim<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    lease: &Lease<'_>,
) -> Result<Vec<ClaimedTask>> {
    let row = db.query_one(
        "SELECT coalesce((SELECT paused FROM queues WHERE queue = $1), false),
                EXISTS (SELECT 1 FROM resource_groups WHERE queue = $1)",
        &[&queue],
    )?;
    if row.get::<_, bool>(0) {
        return Ok(Vec::new());
    }
    if row.get::<_, bool>(1) {
        // Settings stored by a newer ferroq: never claim past limits this one cannot keep.
        return Err(not_yet("claims in a queue with resource group settings"));
    }
    let most = PROMOTE_MAX.max(lease.limit) as i64;
    db.execute(PROMOTE_SQL, &[&queue, &lease.now, &most])?;
    let limit = lease.limit as i64;
    let rows = db.query(
        CLAIM_SQL,
        &[
            &queue,
            &lease.worker,
            &lease.token,
            &lease.now,
            &lease.expires_at,
            &limit,
        ],
    )?;
    let mut tasks: Vec<ClaimedTask> = rows
        .iter()
        .map(|r| ClaimedTask {
            id: r.get(0),
            token: lease.token,
            name: r.get(1),
            resource_group: r.get(2),
            priority: r.get(3),
            attempt: r.get(4),
            max_attempts: r.get(5),
            created_at: r.get(6),
            run_at: r.get(7),
            payload: r.get(8),
            lease_expires_at: lease.expires_at,
        })
        .collect();
    // RETURNING does not promise the CTE's order.
    tasks.sort_unstable_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    if lease.task_events == TaskEvents::All {
        for t in &tasks {
            let detail = format!(
                r#"{{"worker":{},"attempt":{}}}"#,
                json::string(lease.worker),
                t.attempt
            );
            let group = Some(t.resource_group.as_str());
            events::record_task(db, queue, group, Some(t.id), "started", &detail, lease.now)?;
        }
    }
    Ok(tasks)
}
