//! The claim: leases the best ready tasks, within each group's limits.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Transaction};

use super::events;
use super::finish::TaskEvents;
use super::quarantine;
use super::ready::{self, Share};
use super::resource_groups;
use crate::clock::Millis;
use crate::error::Result;
use crate::json;
use crate::resource_group::GroupState;
use crate::task::{ClaimedTask, LeaseToken};

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

/// Leases the tasks `ready::best` chose, in the same transaction. Read, then write: one
/// `UPDATE ... WHERE id IN (SELECT ... LIMIT) RETURNING` collects the returned rows in a
/// temporary table first (measured at 500 a claim: 3.0 -> 2.6-2.7 µs a task).
const LEASE_SQL: &str = "UPDATE tasks
         SET status = 'running', attempts = attempts + 1, lease_owner = ?1, lease_token = ?2,
             lease_expires_at = ?3, started_at = ?4, updated_at = ?4, progress = NULL,
             progress_message = NULL
         WHERE id IN (SELECT value FROM json_each(?5))";

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
/// every group, or only from the groups `only` (sorted, no duplicates) for a worker
/// dedicated to them.
pub fn claim(
    tx: &Transaction<'_>,
    queue: &str,
    only: Option<&[String]>,
    lease: &Lease<'_>,
) -> Result<Vec<ClaimedTask>> {
    if resource_groups::queue_paused(tx, queue)? {
        return Ok(Vec::new());
    }
    promote_due(tx, queue, lease.limit, lease.now)?;
    let mut groups = resource_groups::load_all(tx, queue)?;
    let ready;
    let named: Vec<(&str, Option<(i64, i64)>)> = match only {
        None => {
            ready = ready::groups_with_ready(tx, queue, lease.now)?;
            ready
                .iter()
                .map(|r| (r.group.as_str(), Some(r.best)))
                .collect()
        }
        Some(only) => {
            groups.retain(|g| only.binary_search(&g.name).is_ok());
            only.iter().map(|g| (g.as_str(), None)).collect()
        }
    };
    let tasks = claim_from(tx, queue, &named, groups, lease)?;
    if tasks.len() < lease.limit {
        // Nothing more is ready: set aside delayed tasks that can never come due.
        quarantine::unschedulable(tx, queue, lease.now)?;
    }
    Ok(tasks)
}

/// Leases the best `limit` ready tasks of the groups `names` (with the rank of each one's
/// best task, if known), each within its allowance (`groups`: the settings stored for any
/// of them; a group without is unlimited).
fn claim_from(
    tx: &Transaction<'_>,
    queue: &str,
    names: &[(&str, Option<(i64, i64)>)],
    mut groups: Vec<GroupState>,
    lease: &Lease<'_>,
) -> Result<Vec<ClaimedTask>> {
    let &Lease {
        worker,
        limit,
        now,
        expires_at,
        token,
        task_events,
    } = lease;
    let running = breakers_and_running(tx, queue, &mut groups, now)?;
    let stored: HashMap<&str, &GroupState> = groups.iter().map(|g| (g.name.as_str(), g)).collect();
    let shares: Vec<Share<'_>> = names
        .iter()
        .map(|&(name, best)| {
            let allowed = stored
                .get(name)
                .and_then(|g| g.allowance(running.get(&g.name).copied().unwrap_or(0), now));
            Share {
                group: name,
                cap: allowed.map_or(limit, |a| a.min(limit as u64) as usize),
                best,
            }
        })
        .collect();
    drop(stored);
    let mut tasks = ready::best(tx, queue, &shares, limit, now, token, expires_at)?;
    if !tasks.is_empty() {
        let ids = json::ids(tasks.iter().map(|t| t.id));
        tx.prepare_cached(LEASE_SQL)?
            .execute((worker, token, expires_at, now, ids))?;
    }
    // Only groups that started tasks spend tokens: an empty claim writes nothing (a write
    // would wake every waiting worker, which would claim again, and so on).
    let mut started: HashMap<&str, usize> = HashMap::new();
    for t in &tasks {
        *started.entry(t.resource_group.as_str()).or_default() += 1;
    }
    for g in groups.iter_mut() {
        let n = started.get(g.name.as_str()).copied().unwrap_or(0);
        if g.consume(n, now) {
            resource_groups::save(tx, queue, g, now)?;
        }
    }
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

/// What every limited claim reads first: breakers due to turn half-open do so, and the
/// running count of each group whose allowance depends on it.
fn breakers_and_running(
    tx: &Transaction<'_>,
    queue: &str,
    groups: &mut [GroupState],
    now: Millis,
) -> Result<HashMap<String, u32>> {
    resource_groups::poll_breakers(tx, queue, groups, now)?;
    if groups.iter().any(GroupState::needs_running) {
        resource_groups::running_by_group(tx, queue, now)
    } else {
        Ok(HashMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::super::query_plan as plan;
    use super::super::ready::GROUP_BEST_SQL;
    use super::super::{Options, SqliteStore, read_one, writer_statements};
    use super::{LEASE_SQL, PROMOTE_SQL};
    use crate::store::Store;
    use crate::store::testing::task;
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
        steps_of_one_claim(&store, limit)
    }

    fn steps_of_one_claim(store: &SqliteStore, limit: usize) -> i64 {
        store.claim("q", "w", 1, 30_000).unwrap(); // prepares every statement
        writer_statements(store, SQLITE_STMTSTATUS_VM_STEP, true);
        assert_eq!(store.claim("q", "w", limit, 30_000).unwrap().len(), limit);
        let steps = writer_statements(store, SQLITE_STMTSTATUS_VM_STEP, true);
        steps.iter().map(|(_, n)| i64::from(*n)).sum()
    }

    /// A throttle that starts one task, then almost never another.
    fn one_token_an_hour() -> crate::resource_group::GroupConfig {
        crate::resource_group::GroupConfig {
            breaker: None,
            throttle: Some(crate::policy::throttle::ThrottleConfig {
                rate: Some(0.001),
                burst: 1.0,
                max_concurrency: None,
                adaptive: None,
            }),
        }
    }

    /// VM steps for a claim of 100 when a group held back by `hold` has `held` ready tasks
    /// ahead of the 200 others.
    fn steps_behind_a_held_group(held: usize, hold: impl Fn(&SqliteStore)) -> i64 {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("q.db"), Options::default()).unwrap();
        let mut slow = task("mail", 0);
        slow.resource_group = "smtp".into();
        store.enqueue("q", &vec![slow; held]).unwrap();
        store.enqueue("q", &vec![task("now", 0); 200]).unwrap();
        hold(&store);
        steps_of_one_claim(&store, 100)
    }

    /// A group held back with a backlog is not in the other groups' way: claims used to
    /// walk past all its ready tasks (100,000 of them: 14 ms a claim instead of 1.3).
    #[test]
    fn a_claim_does_not_read_a_held_groups_backlog() {
        let paused = |s: &SqliteStore| {
            s.set_group_paused("q", "smtp", true).unwrap();
        };
        let throttled = |s: &SqliteStore| {
            s.configure_group("q", "smtp", &one_token_an_hour())
                .unwrap();
        };
        for (how, hold) in [
            ("paused", &paused as &dyn Fn(&SqliteStore)),
            ("throttled", &throttled),
        ] {
            let alone = steps_behind_a_held_group(0, hold);
            let behind = steps_behind_a_held_group(20_000, hold);
            assert!(
                behind < alone * 3 / 2,
                "{how}: {behind} VM steps behind 20,000 held tasks, {alone} with none"
            );
        }
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

    /// A claim that takes nothing writes nothing, a throttled group's included: a write
    /// wakes every waiting worker, which claims again (a worker draining a throttled group
    /// spun on its own empty claims and never saw the queue empty).
    #[test]
    fn an_empty_claim_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("q.db"), Options::default()).unwrap();
        store
            .configure_group("q", "api", &one_token_an_hour())
            .unwrap();
        let mut call = task("call", 0);
        call.resource_group = "api".into();
        store.enqueue("q", &[call.clone(), call]).unwrap();
        assert_eq!(store.claim("q", "w", 10, 30_000).unwrap().len(), 1);
        let before = store.change_token().unwrap();
        assert!(store.claim("q", "w", 10, 30_000).unwrap().is_empty());
        assert_eq!(store.change_token().unwrap(), before);
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
        let ready = |store: &SqliteStore| {
            read_one(
                store,
                "SELECT count(*) FROM tasks WHERE status = 'pending' AND run_at <= updated_at",
            )
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
    fn claim_reads_each_groups_slice_of_the_ready_index_without_sorting() {
        let best = plan(GROUP_BEST_SQL, ("q", 1, "a", 10, 0));
        assert!(
            best.contains("INDEX tasks_ready (queue=? AND resource_group=?)"),
            "{best}"
        );
        assert!(!best.contains("TEMP B-TREE"), "{best}");
        // Finding the groups with ready tasks reads the index alone.
        let groups = plan(super::super::ready::GROUP_AFTER_SQL, ("q", ""));
        assert!(
            groups.contains("COVERING INDEX tasks_ready (queue=? AND resource_group>?)"),
            "{groups}"
        );
        // Leasing chosen ids goes by primary key, never by scanning the table.
        let lease = plan(LEASE_SQL, ("w", 1, 2, 3, "[1,2]"));
        assert!(lease.contains("INTEGER PRIMARY KEY"), "{lease}");
        // Delayed tasks come due in run_at order, straight from their index.
        let promote = plan(PROMOTE_SQL, ("q", 1, 10));
        assert!(
            promote.contains("INDEX tasks_due (queue=? AND run_at<?)"),
            "{promote}"
        );
        assert!(!promote.contains("TEMP B-TREE FOR ORDER BY"), "{promote}");
    }
}
