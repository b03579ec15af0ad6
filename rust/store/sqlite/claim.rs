//! The claim: one statement that leases the best ready tasks.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Transaction};

use super::events;
use super::finish::TaskEvents;
use super::json;
use super::resource_groups::{self, Group};
use crate::clock::Millis;
use crate::error::Result;
use crate::task::{ClaimedTask, LeaseToken, TaskId};

/// The best ready tasks, as the claim hands them out (attempt counted). `INDEXED BY`: left
/// alone, the planner prefers `tasks_due` and sorts every ready task to find the first few
/// (measured: 0.7 ms per claim with 8,000 pending). `run_at <= updated_at` is the index's
/// own condition (delayed tasks are not in it, see migration 5), written out so that
/// SQLite may use it; `run_at <= ?2` still guards against a clock behind the enqueuer's.
const READY_SQL: &str = "SELECT id, name, resource_group, payload, priority, attempts + 1,
                max_attempts, created_at, run_at
         FROM tasks INDEXED BY tasks_ready
         WHERE queue = ?1 AND status = 'pending' AND run_at <= updated_at AND run_at <= ?2
         ORDER BY priority DESC, id
         LIMIT ?3";

/// Moves delayed tasks that came due into `tasks_ready`, earliest first: setting
/// updated_at to now makes `run_at <= updated_at` true (see migration 5).
const PROMOTE_SQL: &str = "UPDATE tasks SET updated_at = ?2
         WHERE id IN (SELECT id FROM tasks INDEXED BY tasks_due
                      WHERE queue = ?1 AND status = 'pending' AND run_at > updated_at
                        AND run_at <= ?2
                      ORDER BY run_at LIMIT ?3)";

/// Most delayed tasks one claim makes ready (more if the claim asks for more): a burst
/// that came due at once (a million scheduled for the same minute) moves over several
/// claims of a few milliseconds each, not in one transaction that holds every writer back.
/// Tasks moved later may wait behind lower priorities moved earlier until then.
const PROMOTE_MAX: usize = 5_000;

/// Leases the tasks `READY_SQL` chose, in the same transaction. Read, then write: one
/// `UPDATE ... WHERE id IN (SELECT ... LIMIT) RETURNING` collects the returned rows in a
/// temporary table first (measured at 500 a claim: 3.0 -> 2.6-2.7 µs a task).
const LEASE_SQL: &str = "UPDATE tasks
         SET status = 'running', attempts = attempts + 1, lease_owner = ?1, lease_token = ?2,
             lease_expires_at = ?3, started_at = ?4, updated_at = ?4, progress = NULL
         WHERE id IN (SELECT value FROM json_each(?5))";

/// Claims only from these groups' pending tasks, or from all but these; the ids to lease
/// are then chosen by priority and id across both, as one ordered queue.
const CANDIDATES_EXCEPT: &str = "SELECT id, priority FROM tasks INDEXED BY tasks_ready
         WHERE queue = ?1 AND status = 'pending' AND run_at <= updated_at AND run_at <= ?2
           AND resource_group NOT IN (SELECT value FROM json_each(?3))
         ORDER BY priority DESC, id LIMIT ?4";
const CANDIDATES_OF: &str = "SELECT id, priority FROM tasks INDEXED BY tasks_ready
         WHERE queue = ?1 AND status = 'pending' AND run_at <= updated_at AND run_at <= ?2
           AND resource_group = ?3
         ORDER BY priority DESC, id LIMIT ?4";
const CLAIM_IDS_SQL: &str = "UPDATE tasks
         SET status = 'running', attempts = attempts + 1, lease_owner = ?1, lease_token = ?2,
             lease_expires_at = ?3, started_at = ?4, updated_at = ?4, progress = NULL
         WHERE id IN (SELECT value FROM json_each(?5)) AND status = 'pending'
         RETURNING id, name, resource_group, payload, priority, attempts, max_attempts, created_at,
                   run_at";

/// Leases up to `limit` ready tasks to `worker`, highest priority first, FIFO within a
/// priority, skipping what paused queues and groups, open breakers and throttles hold back.
#[allow(clippy::too_many_arguments)]
pub fn claim(
    tx: &Transaction<'_>,
    queue: &str,
    worker: &str,
    limit: usize,
    now: Millis,
    expires_at: Millis,
    token: LeaseToken,
    task_events: TaskEvents,
) -> Result<Vec<ClaimedTask>> {
    if resource_groups::queue_paused(tx, queue)? {
        return Ok(Vec::new());
    }
    promote_due(tx, queue, limit, now)?;
    let mut groups = resource_groups::load_all(tx, queue)?;
    let mut tasks = if groups.is_empty() {
        claim_any(tx, queue, worker, limit, now, expires_at, token)?
    } else {
        claim_within_limits(
            tx,
            queue,
            &mut groups,
            worker,
            limit,
            now,
            expires_at,
            token,
        )?
    };
    settle(tx, queue, worker, &mut tasks, task_events, now)?;
    Ok(tasks)
}

/// Whether any delayed task came due: one index seek, where the UPDATE would build its
/// temporary table first (3 µs, a tenth of a one-task claim).
const ANY_DUE_SQL: &str = "SELECT 1 FROM tasks INDEXED BY tasks_due
         WHERE queue = ?1 AND status = 'pending' AND run_at > updated_at AND run_at <= ?2";

/// Makes delayed tasks that came due claimable (see `PROMOTE_SQL`).
fn promote_due(tx: &Transaction<'_>, queue: &str, limit: usize, now: Millis) -> Result<()> {
    if tx.prepare_cached(ANY_DUE_SQL)?.exists((queue, now))? {
        let most = PROMOTE_MAX.max(limit) as i64;
        tx.prepare_cached(PROMOTE_SQL)?
            .execute((queue, now, most))?;
    }
    Ok(())
}

/// What every claim does with what it leased: orders it, reads the payloads stored apart,
/// and records "started" events.
fn settle(
    tx: &Transaction<'_>,
    queue: &str,
    worker: &str,
    tasks: &mut [ClaimedTask],
    task_events: TaskEvents,
    now: Millis,
) -> Result<()> {
    // RETURNING does not promise the subquery's order.
    tasks.sort_unstable_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    // An empty payload in the row means a large one in `task_payloads` (or a payload that
    // really is empty, which has no row there).
    let mut apart = None;
    for t in tasks.iter_mut().filter(|t| t.payload.is_empty()) {
        let stmt = match &mut apart {
            Some(stmt) => stmt,
            None => apart
                .insert(tx.prepare_cached("SELECT payload FROM task_payloads WHERE task_id = ?1")?),
        };
        if let Some(payload) = stmt.query_row([t.id], |r| r.get(0)).optional()? {
            t.payload = payload;
        }
    }
    // No history row: the claim is in the task's started_at and lease_owner until the run
    // ends, and a run that ends other than completed records it then (`admin::history`).
    if task_events == TaskEvents::All {
        for t in tasks.iter() {
            let detail = format!(
                r#"{{"worker":{},"attempt":{}}}"#,
                json::string(worker),
                t.attempt
            );
            let group = Some(t.resource_group.as_str());
            events::record_task(tx, queue, group, Some(t.id), "started", &detail, now)?;
        }
    }
    Ok(())
}

/// The common case: no group of the queue has limits.
fn claim_any(
    tx: &Transaction<'_>,
    queue: &str,
    worker: &str,
    limit: usize,
    now: Millis,
    expires_at: Millis,
    token: LeaseToken,
) -> Result<Vec<ClaimedTask>> {
    let tasks = tx
        .prepare_cached(READY_SQL)?
        .query_map((queue, now, limit as i64), |r| {
            claimed(r, token, expires_at)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if !tasks.is_empty() {
        let ids = json::ids(tasks.iter().map(|t| t.id));
        tx.prepare_cached(LEASE_SQL)?
            .execute((worker, token, expires_at, now, ids))?;
    }
    Ok(tasks)
}

#[allow(clippy::too_many_arguments)]
fn claim_within_limits(
    tx: &Transaction<'_>,
    queue: &str,
    groups: &mut [Group],
    worker: &str,
    limit: usize,
    now: Millis,
    expires_at: Millis,
    token: LeaseToken,
) -> Result<Vec<ClaimedTask>> {
    let running = breakers_and_running(tx, queue, groups, now)?;
    let allowances: Vec<Option<u64>> = groups
        .iter()
        .map(|g| g.allowance(running.get(&g.name).copied().unwrap_or(0), now))
        .collect();
    if allowances.iter().all(Option::is_none) {
        return claim_any(tx, queue, worker, limit, now, expires_at, token);
    }
    let limited: Vec<&str> = groups
        .iter()
        .zip(&allowances)
        .filter(|(_, a)| a.is_some())
        .map(|(g, _)| g.name.as_str())
        .collect();
    let mut candidates: Vec<(TaskId, i64)> = Vec::with_capacity(limit);
    let mut except = tx.prepare_cached(CANDIDATES_EXCEPT)?;
    for row in except.query_map(
        (
            queue,
            now,
            json::strings(limited.iter().copied()),
            limit as i64,
        ),
        |r| Ok((r.get(0)?, r.get(1)?)),
    )? {
        candidates.push(row?);
    }
    let mut of = tx.prepare_cached(CANDIDATES_OF)?;
    for (g, allowed) in groups.iter().zip(&allowances) {
        let take = allowed.map_or(0, |a| a.min(limit as u64));
        if take == 0 {
            continue;
        }
        for row in of.query_map((queue, now, &g.name, take as i64), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })? {
            candidates.push(row?);
        }
    }
    lease_candidates(
        tx, queue, groups, candidates, worker, limit, now, expires_at, token,
    )
}

/// Leases the best `limit` of `candidates` (id, priority) and takes their groups' tokens.
#[allow(clippy::too_many_arguments)]
fn lease_candidates(
    tx: &Transaction<'_>,
    queue: &str,
    groups: &mut [Group],
    mut candidates: Vec<(TaskId, i64)>,
    worker: &str,
    limit: usize,
    now: Millis,
    expires_at: Millis,
    token: LeaseToken,
) -> Result<Vec<ClaimedTask>> {
    candidates.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    candidates.truncate(limit);
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let ids = json::ids(candidates.iter().map(|c| c.0));
    let tasks = tx
        .prepare_cached(CLAIM_IDS_SQL)?
        .query_map((worker, token, expires_at, now, ids), |r| {
            claimed(r, token, expires_at)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for g in groups.iter_mut() {
        if g.tokens_now(now).is_some() {
            let n = tasks.iter().filter(|t| t.resource_group == g.name).count();
            g.consume(n, now);
            resource_groups::save(tx, queue, g, now)?;
        }
    }
    Ok(tasks)
}

/// `claim` for a worker dedicated to some groups (`only`: sorted, no duplicates): the
/// best ready tasks of those groups only, each group within its limits.
#[allow(clippy::too_many_arguments)]
pub fn claim_in_groups(
    tx: &Transaction<'_>,
    queue: &str,
    only: &[String],
    worker: &str,
    limit: usize,
    now: Millis,
    expires_at: Millis,
    token: LeaseToken,
    task_events: TaskEvents,
) -> Result<Vec<ClaimedTask>> {
    if resource_groups::queue_paused(tx, queue)? {
        return Ok(Vec::new());
    }
    promote_due(tx, queue, limit, now)?;
    let mut groups = resource_groups::load_all(tx, queue)?;
    groups.retain(|g| only.binary_search(&g.name).is_ok());
    let running = breakers_and_running(tx, queue, &mut groups, now)?;
    let mut candidates: Vec<(TaskId, i64)> = Vec::with_capacity(limit);
    let mut of = tx.prepare_cached(CANDIDATES_OF)?;
    for name in only {
        // A group without a row has no limits.
        let allowed = groups
            .iter()
            .find(|g| &g.name == name)
            .and_then(|g| g.allowance(running.get(&g.name).copied().unwrap_or(0), now));
        let take = allowed.map_or(limit as u64, |a| a.min(limit as u64));
        if take == 0 {
            continue;
        }
        for row in of.query_map((queue, now, name, take as i64), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })? {
            candidates.push(row?);
        }
    }
    drop(of);
    let mut tasks = lease_candidates(
        tx,
        queue,
        &mut groups,
        candidates,
        worker,
        limit,
        now,
        expires_at,
        token,
    )?;
    settle(tx, queue, worker, &mut tasks, task_events, now)?;
    Ok(tasks)
}

/// What every limited claim reads first: breakers due to turn half-open do so, and the
/// running count of each group whose allowance depends on it.
fn breakers_and_running(
    tx: &Transaction<'_>,
    queue: &str,
    groups: &mut [Group],
    now: Millis,
) -> Result<HashMap<String, u32>> {
    resource_groups::poll_breakers(tx, queue, groups, now)?;
    if groups.iter().any(Group::needs_running) {
        resource_groups::running_by_group(tx, queue, now)
    } else {
        Ok(HashMap::new())
    }
}

fn claimed(
    r: &rusqlite::Row<'_>,
    token: LeaseToken,
    expires_at: Millis,
) -> rusqlite::Result<ClaimedTask> {
    Ok(ClaimedTask {
        id: r.get(0)?,
        token,
        name: r.get(1)?,
        resource_group: r.get(2)?,
        payload: r.get(3)?,
        priority: r.get(4)?,
        attempt: r.get(5)?,
        max_attempts: r.get(6)?,
        created_at: r.get(7)?,
        run_at: r.get(8)?,
        lease_expires_at: expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::super::query_plan as plan;
    use super::super::{Options, SqliteStore, writer_statements};
    use super::{
        CANDIDATES_EXCEPT, CANDIDATES_OF, CLAIM_IDS_SQL, LEASE_SQL, PROMOTE_SQL, READY_SQL,
    };
    use crate::store::Store;
    use crate::store::conformance::task;
    use rusqlite::ffi::SQLITE_STMTSTATUS_VM_STEP;

    /// SQLite's VM steps for one claim of `limit` on a store holding `ready` tasks and
    /// `delayed` ones due in an hour (a count, not a time: the same on any machine).
    fn claim_steps(ready: usize, delayed: usize, limit: usize) -> i64 {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("q.db"), Options::default()).unwrap();
        let mut later = task("later", 0);
        later.run_at = Some(store.now_ms() + 3_600_000);
        // Delayed first: a claim in id order meets them before the ready ones.
        store.enqueue("q", &vec![later; delayed]).unwrap();
        store.enqueue("q", &vec![task("now", 0); ready]).unwrap();
        store.claim("q", "w", 1, 30_000).unwrap(); // prepares every statement
        writer_statements(&store, SQLITE_STMTSTATUS_VM_STEP, true);
        assert_eq!(store.claim("q", "w", limit, 30_000).unwrap().len(), limit);
        let steps = writer_statements(&store, SQLITE_STMTSTATUS_VM_STEP, true);
        steps.iter().map(|(_, n)| i64::from(*n)).sum()
    }

    /// Tasks scheduled for later are not in the claim's way: it used to walk past every one
    /// of them (with 1,000,000 delayed, a claim of 100 took 54 ms instead of 0.8).
    #[test]
    fn a_claim_does_not_read_the_delayed_tasks() {
        let alone = claim_steps(200, 0, 100);
        let behind_delayed = claim_steps(200, 20_000, 100);
        assert!(
            behind_delayed < alone * 3 / 2,
            "{behind_delayed} VM steps behind 20,000 delayed tasks, {alone} with none"
        );
    }

    /// A burst that came due at once is made ready a bounded number at a time, and every
    /// task of it is claimed in the end.
    #[test]
    fn a_burst_of_due_tasks_is_made_ready_a_bounded_number_at_a_time() {
        use crate::clock::{Clock, ManualClock};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let store = SqliteStore::open_with_clock(
            dir.path().join("q.db"),
            Options::default(),
            clock.clone(),
        )
        .unwrap();
        let burst = super::PROMOTE_MAX + 500;
        let mut later = task("later", 0);
        later.run_at = Some(clock.now_ms() + 1_000);
        store.enqueue("q", &vec![later; burst]).unwrap();
        clock.advance(1_000);
        let ready = |store: &SqliteStore| -> i64 {
            store
                .with_conn(
                    |l| &l.reader,
                    |c| {
                        Ok(c.query_row(
                            "SELECT count(*) FROM tasks WHERE status = 'pending' AND run_at <= updated_at",
                            [],
                            |r| r.get(0),
                        )?)
                    },
                )
                .unwrap()
        };
        assert_eq!(ready(&store), 0);
        assert_eq!(store.claim("q", "w", 10, 30_000).unwrap().len(), 10);
        assert_eq!(
            ready(&store),
            super::PROMOTE_MAX as i64 - 10,
            "one claim moved PROMOTE_MAX"
        );
        let mut claimed = 10;
        loop {
            let got = store.claim("q", "w", 2_000, 30_000).unwrap().len();
            if got == 0 {
                break;
            }
            claimed += got;
        }
        assert_eq!(claimed, burst);
    }

    #[test]
    fn claim_walks_the_ready_index_without_sorting() {
        for plan in [
            plan(READY_SQL, ("q", 1, 10)),
            plan(CANDIDATES_EXCEPT, ("q", 1, "[\"a\"]", 10)),
            plan(CANDIDATES_OF, ("q", 1, "a", 10)),
        ] {
            assert!(plan.contains("tasks_ready"), "{plan}");
            assert!(!plan.contains("TEMP B-TREE FOR ORDER BY"), "{plan}");
        }
        // Delayed tasks come due in run_at order, straight from their index.
        let promote = plan(PROMOTE_SQL, ("q", 1, 10));
        assert!(
            promote.contains("INDEX tasks_due (queue=? AND run_at<?)"),
            "{promote}"
        );
        assert!(!promote.contains("TEMP B-TREE FOR ORDER BY"), "{promote}");
        // Leasing chosen ids goes by primary key, never by scanning the table.
        for by_ids in [
            plan(CLAIM_IDS_SQL, ("w", 1, 2, 3, "[1,2]")),
            plan(LEASE_SQL, ("w", 1, 2, 3, "[1,2]")),
        ] {
            assert!(by_ids.contains("INTEGER PRIMARY KEY"), "{by_ids}");
        }
    }
}
