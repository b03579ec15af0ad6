//! The claim: the best ready tasks, locked with `FOR UPDATE SKIP LOCKED` (claimers on other
//! hosts skip each other's rows instead of waiting) inside a `MATERIALIZED` CTE (else the
//! planner may run the LIMIT subquery more than once and lease more than it meant to), then
//! leased in the same statement.

use postgres::GenericClient;

use super::events;
use super::pool::Db;
use std::collections::HashMap;

use super::groups;
use crate::clock::Millis;
use crate::error::Result;
use crate::json;
use crate::resource_group::GroupState;
use crate::store::TaskEvents;
use crate::task::{ClaimedTask, LeaseToken};

/// Whether the queue is paused and whether it has group settings; unless paused, moves
/// delayed tasks that came due into `tasks_ready` (updated_at = now makes `run_at <=
/// updated_at` true), earliest first, at most `$3` a claim.
const CHECK_AND_PROMOTE_SQL: &str = "WITH s AS (
         SELECT coalesce((SELECT paused FROM queues WHERE queue = $1), false) AS paused,
                EXISTS (SELECT 1 FROM resource_groups WHERE queue = $1) AS limited),
     p AS (
         UPDATE tasks SET updated_at = $2
         WHERE id IN (SELECT id FROM tasks
                      WHERE queue = $1 AND status = 'pending' AND run_at > updated_at
                        AND run_at <= $2 AND NOT (SELECT paused FROM s)
                      ORDER BY run_at LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING 1)
     SELECT paused, limited, (SELECT count(*) FROM p) FROM s";

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

/// The claim of a queue with group settings (or restricted to some groups): the best ready
/// tasks overall, at most `cap` of each capped group (`$7`, `$8`), of the groups `$9` only
/// when given. The caller holds the queue's group rows locked, so no other claim on the
/// queue runs meanwhile (caps and tokens hold across hosts); the UPDATE re-checks each row
/// is still pending (an operator may have cancelled it since).
const LIMITED_SQL: &str = "WITH caps AS (
         SELECT * FROM unnest($7::text[], $8::bigint[]) AS c(grp, cap)),
     ranked AS (
         SELECT t.id, t.priority, caps.cap,
                row_number() OVER (PARTITION BY t.resource_group
                                   ORDER BY t.priority DESC, t.id) AS rn
         FROM tasks t LEFT JOIN caps ON caps.grp = t.resource_group
         WHERE t.queue = $1 AND t.status = 'pending' AND t.run_at <= t.updated_at
           AND t.run_at <= $4 AND ($9::text[] IS NULL OR t.resource_group = ANY($9))
           AND coalesce(caps.cap, 1) > 0),
     c AS MATERIALIZED (
         SELECT id FROM ranked WHERE cap IS NULL OR rn <= cap
         ORDER BY priority DESC, id LIMIT $6)
     UPDATE tasks t
     SET status = 'running', attempts = t.attempts + 1, lease_owner = $2, lease_token = $3,
         lease_expires_at = $5, started_at = $4, updated_at = $4, progress = NULL,
         progress_message = NULL
     FROM c WHERE t.id = c.id AND t.status = 'pending'
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

/// Leases up to `lease.limit` ready tasks, highest priority first, FIFO within a priority,
/// skipping what paused queues and groups, open breakers and throttles hold back: from
/// every group, or only from the groups `only` for a worker dedicated to them.
pub fn claim<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    only: Option<&[String]>,
    lease: &Lease<'_>,
) -> Result<Vec<ClaimedTask>> {
    let Some(limited) = check_and_promote(db, queue, lease)? else {
        return Ok(Vec::new()); // paused
    };
    let limit = lease.limit as i64;
    let params = [
        &queue as &(dyn postgres::types::ToSql + Sync),
        &lease.worker,
        &lease.token,
        &lease.now,
        &lease.expires_at,
        &limit,
    ];
    let rows = if limited || only.is_some() {
        claim_limited(db, queue, only, lease, &params)?
    } else {
        db.query(CLAIM_SQL, &params)?
    };
    let mut tasks = leased(&rows, lease);
    if limited {
        spend_tokens(db, queue, &tasks, lease.now)?;
    }
    settle(db, queue, &mut tasks, lease)?;
    Ok(tasks)
}

/// The claim of a queue without group settings, from every group, without task events: a
/// statement that promotes due tasks and reads the queue's state, then the claim, each
/// atomic on its own (run outside a transaction: two round trips, not five). `None` when
/// the queue turns out to have group settings: the caller claims in a transaction instead.
pub fn claim_unlimited<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    lease: &Lease<'_>,
) -> Result<Option<Vec<ClaimedTask>>> {
    match check_and_promote(db, queue, lease)? {
        None => Ok(Some(Vec::new())), // paused
        Some(true) => Ok(None),
        Some(false) => {
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
            let mut tasks = leased(&rows, lease);
            settle(db, queue, &mut tasks, lease)?;
            Ok(Some(tasks))
        }
    }
}

/// Whether the queue has group settings (`None`: it is paused), having made the delayed
/// tasks that came due claimable, in one statement.
fn check_and_promote<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    lease: &Lease<'_>,
) -> Result<Option<bool>> {
    let most = PROMOTE_MAX.max(lease.limit) as i64;
    let row = db.query_one(CHECK_AND_PROMOTE_SQL, &[&queue, &lease.now, &most])?;
    Ok((!row.get::<_, bool>(0)).then(|| row.get(1)))
}

/// The tasks a claim's RETURNING rows describe.
fn leased(rows: &[postgres::Row], lease: &Lease<'_>) -> Vec<ClaimedTask> {
    rows.iter()
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
        .collect()
}

/// Orders what a claim leased and records "started" events when asked.
fn settle<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    tasks: &mut [ClaimedTask],
    lease: &Lease<'_>,
) -> Result<()> {
    // RETURNING does not promise the CTE's order.
    tasks.sort_unstable_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    if lease.task_events == TaskEvents::All {
        for t in tasks.iter() {
            let detail = format!(
                r#"{{"worker":{},"attempt":{}}}"#,
                json::string(lease.worker),
                t.attempt
            );
            let group = Some(t.resource_group.as_str());
            events::record_task(db, queue, group, Some(t.id), "started", &detail, lease.now)?;
        }
    }
    Ok(())
}

/// The limited claim (see `LIMITED_SQL`): locks the queue's group rows, turns due breakers
/// half-open, and caps each group at its allowance (`GroupState::allowance`).
fn claim_limited<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    only: Option<&[String]>,
    lease: &Lease<'_>,
    params: &[&(dyn postgres::types::ToSql + Sync); 6],
) -> Result<Vec<postgres::Row>> {
    let mut groups = groups::load_all(db, queue, true)?;
    if let Some(only) = only {
        groups.retain(|g| only.contains(&g.name));
    }
    groups::poll_breakers(db, queue, &mut groups, lease.now)?;
    let running = if groups.iter().any(GroupState::needs_running) {
        groups::running_by_group(db, queue, lease.now)?
    } else {
        HashMap::new()
    };
    let mut names = Vec::new();
    let mut caps = Vec::new();
    for g in &groups {
        let running = running.get(&g.name).copied().unwrap_or(0);
        if let Some(allowed) = g.allowance(running, lease.now) {
            names.push(g.name.as_str());
            caps.push(allowed.min(lease.limit as u64) as i64);
        }
    }
    let only: Option<Vec<&str>> = only.map(|o| o.iter().map(String::as_str).collect());
    let mut all = params.to_vec();
    all.extend([&names as &(dyn postgres::types::ToSql + Sync), &caps, &only]);
    db.query(LIMITED_SQL, &all)
}

/// Groups that started tasks spend their tokens (an empty claim writes nothing).
fn spend_tokens<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    tasks: &[ClaimedTask],
    now: Millis,
) -> Result<()> {
    let mut started: HashMap<&str, usize> = HashMap::new();
    for t in tasks {
        *started.entry(t.resource_group.as_str()).or_default() += 1;
    }
    if started.is_empty() {
        return Ok(());
    }
    // Already locked by this transaction's claim.
    for mut g in groups::load_all(db, queue, false)? {
        let n = started.get(g.name.as_str()).copied().unwrap_or(0);
        if g.consume(n, now) {
            groups::save(db, queue, &g, now)?;
        }
    }
    Ok(())
}
