//! Reads and operator actions: get, cancel, requeue, history, counts, pruning.

use rusqlite::{Connection, OptionalExtension, Transaction};

use super::decode::Lenient;
use super::events;
use super::history;
use super::listing::{self, RECORD_COLUMNS};
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::policy::retention::{Keep, Retention};
use crate::task::{TaskId, TaskRecord, TaskStatus, Transition};

/// One task and its result; `CorruptTask` if a column holds a value of the wrong type
/// (listings show such a row instead, see `listing::record`).
pub fn get(conn: &Connection, queue: &str, id: TaskId) -> Result<TaskRecord> {
    let t = conn
        .prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM tasks t LEFT JOIN task_results r ON r.task_id = t.id
             WHERE t.id = ?1 AND t.queue = ?2"
        ))?
        .query_row((id, queue), listing::record)
        .optional()?
        .ok_or(Error::UnknownTask(id))?;
    match t.corrupt {
        None => Ok(t),
        Some(bad) => Err(Error::CorruptTask {
            id,
            column: bad.column,
            problem: bad.problem,
            raw: bad.raw,
        }),
    }
}

/// The status of a task that exists, or `UnknownTask`.
fn existing_status(conn: &Connection, queue: &str, id: TaskId) -> Result<TaskStatus> {
    history::status_of(conn, queue, id)?.ok_or(Error::UnknownTask(id))
}

/// pending -> cancelled.
/// pending -> cancelled; returns the task's resource group.
pub fn cancel(tx: &Transaction<'_>, queue: &str, id: TaskId, now: Millis) -> Result<String> {
    let group: Option<String> = tx
        .prepare_cached(
            "UPDATE tasks SET status = 'cancelled', finished_at = ?3, updated_at = ?3
             WHERE id = ?1 AND queue = ?2 AND status = 'pending'
             RETURNING resource_group",
        )?
        .query_row((id, queue, now), |r| r.get(0))
        .optional()?;
    let Some(group) = group else {
        let status = existing_status(tx, queue, id)?;
        return Err(Error::InvalidTransition {
            id,
            action: "cancel",
            status,
        });
    };
    history::record(
        tx,
        id,
        Some(TaskStatus::Pending),
        TaskStatus::Cancelled,
        now,
        None,
        None,
    )?;
    events::record_task(tx, queue, Some(&group), Some(id), "cancelled", "{}", now)?;
    Ok(group)
}

/// dead or cancelled -> pending, attempts reset.
pub fn requeue(tx: &Transaction<'_>, queue: &str, id: TaskId, now: Millis) -> Result<()> {
    let status = existing_status(tx, queue, id)?;
    if !matches!(status, TaskStatus::Dead | TaskStatus::Cancelled) {
        return Err(Error::InvalidTransition {
            id,
            action: "requeue",
            status,
        });
    }
    let holder: Option<TaskId> = tx
        .prepare_cached(
            "SELECT other.id FROM tasks this JOIN tasks other
               ON other.queue = this.queue AND other.unique_key = this.unique_key
             WHERE this.id = ?1 AND other.status IN ('pending', 'running')",
        )?
        .query_row([id], |r| r.get(0))
        .optional()?;
    if let Some(holder) = holder {
        return Err(Error::Refused(format!(
            "cannot requeue task {id}: its unique key is held by unfinished task {holder}"
        )));
    }
    tx.prepare_cached(
        "UPDATE tasks SET status = 'pending', attempts = 0, run_at = ?2, updated_at = ?2,
                          finished_at = NULL, progress = NULL,
                          progress_message = NULL
         WHERE id = ?1",
    )?
    .execute((id, now))?;
    history::record(tx, id, Some(status), TaskStatus::Pending, now, None, None)
}

/// Every transition of a task, oldest first.
///
/// The common path writes no history rows, which saves B-tree writes per task: the enqueue
/// is the task's `created_at`; the current or last run's claim is its `started_at` and
/// `lease_owner` (while running, and once completed); the completion is its `finished_at`.
/// Rows are written only for runs that end otherwise (their claim with them), and for
/// operator actions. Files written before this kept every transition as a row: a derived
/// transition equal to a stored one is not repeated.
pub fn history(conn: &Connection, queue: &str, id: TaskId) -> Result<Vec<Transition>> {
    // Read leniently: the history of a row edited by hand is still shown (`decode`); a
    // time that is not a number leaves out the transition it dates.
    let (created_at, status, started_at, finished_at, worker): (
        Option<Millis>,
        TaskStatus,
        Option<Millis>,
        Option<Millis>,
        Option<String>,
    ) = conn
        .prepare_cached(
            "SELECT created_at, status, started_at, finished_at, lease_owner FROM tasks
             WHERE id = ?1 AND queue = ?2",
        )?
        .query_row((id, queue), |r| {
            let mut d = Lenient::new(r);
            let created_at = d.opt_int(0, "created_at")?;
            let status = r.get(1)?;
            Ok((
                created_at,
                status,
                d.opt_int(2, "started_at")?,
                d.opt_int(3, "finished_at")?,
                d.opt_text(4, "lease_owner")?,
            ))
        })
        .optional()?
        .ok_or(Error::UnknownTask(id))?;
    let mut stmt = conn.prepare_cached(
        "SELECT from_status, to_status, at, worker, error FROM task_history
         WHERE task_id = ?1 ORDER BY id",
    )?;
    let stored = stmt
        .query_map([id], |r| {
            Ok(Transition {
                from: r.get(0)?,
                to: r.get(1)?,
                at: r.get(2)?,
                worker: r.get(3)?,
                error: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let derived = |from, to, at: Option<Millis>| {
        at.map(|at| Transition {
            from: Some(from),
            to,
            at,
            worker: worker.clone(),
            error: None,
        })
    };
    let mut tail = Vec::new();
    if matches!(status, TaskStatus::Running | TaskStatus::Completed) {
        tail.extend(derived(
            TaskStatus::Pending,
            TaskStatus::Running,
            started_at,
        ));
    }
    if status == TaskStatus::Completed {
        tail.extend(derived(
            TaskStatus::Running,
            TaskStatus::Completed,
            finished_at,
        ));
    }
    let is_stored = |t: &Transition| {
        stored
            .iter()
            .any(|s| (s.from, s.to, s.at) == (t.from, t.to, t.at))
    };
    tail.retain(|t| !is_stored(t));
    let enqueued = created_at.map(|at| Transition {
        from: None,
        to: TaskStatus::Pending,
        at,
        worker: None,
        error: None,
    });
    Ok(enqueued.into_iter().chain(stored).chain(tail).collect())
}

/// One arm per partial index (pending tasks are in two: ready and delayed), so counting
/// never walks the whole table.
pub(super) const COUNTS_SQL: &str = "SELECT 'pending', count(*) FROM tasks
     WHERE queue = ?1 AND status = 'pending' AND run_at <= updated_at
     UNION ALL
     SELECT 'pending', count(*) FROM tasks
     WHERE queue = ?1 AND status = 'pending' AND run_at > updated_at
     UNION ALL
     SELECT 'running', count(*) FROM tasks WHERE queue = ?1 AND status = 'running'
     UNION ALL
     SELECT status, count(*) FROM tasks
     WHERE queue = ?1 AND status NOT IN ('pending', 'running') GROUP BY status";

/// Tasks per status, every status listed.
pub fn counts(conn: &Connection, queue: &str) -> Result<Vec<(TaskStatus, u64)>> {
    let mut stmt = conn.prepare_cached(COUNTS_SQL)?;
    let found: Vec<(TaskStatus, u64)> = stmt
        .query_map([queue], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(TaskStatus::ALL
        .into_iter()
        .map(|s| {
            let n = found.iter().filter(|(f, _)| *f == s).map(|(_, n)| n).sum();
            (s, n)
        })
        .collect())
}

/// Deletes up to `limit` finished tasks that break the retention; returns how many.
pub fn prune_batch(
    tx: &Transaction<'_>,
    queue: &str,
    retention: &Retention,
    now: Millis,
    limit: u64,
) -> Result<u64> {
    let mut deleted = 0;
    for (keep, statuses) in [
        (&retention.completed, &["completed", "cancelled"][..]),
        (&retention.dead, &["dead"][..]),
    ] {
        for status in statuses {
            if deleted >= limit {
                return Ok(deleted);
            }
            deleted += prune_status(tx, queue, status, keep, now, limit - deleted)?;
        }
    }
    Ok(deleted)
}

fn prune_status(
    tx: &Transaction<'_>,
    queue: &str,
    status: &str,
    keep: &Keep,
    now: Millis,
    limit: u64,
) -> Result<u64> {
    if keep.keeps_all() {
        return Ok(0);
    }
    // Age: finished before the cutoff. Count: beyond the newest `max_count` by finish time.
    let cutoff = keep.max_age_ms.map(|age| now - age);
    let offset = keep.max_count.map(|n| n as i64);
    // The status is spelled into the SQL (it is one of our constants): the planner can
    // use the partial `tasks_finished` index only for a literal status.
    let status = TaskStatus::parse(status)?.as_str();
    let sql = format!(
        "DELETE FROM tasks WHERE id IN (
             SELECT id FROM tasks
             WHERE queue = ?1 AND status = '{status}' AND finished_at < ?2
               AND status NOT IN ('pending', 'running')
             UNION
             SELECT id FROM (SELECT id FROM tasks WHERE queue = ?1 AND status = '{status}'
                              AND status NOT IN ('pending', 'running')
                             ORDER BY finished_at DESC, id DESC
                             LIMIT -1 OFFSET coalesce(?3, 0))
             WHERE ?3 IS NOT NULL
             LIMIT ?4)"
    );
    let changed = tx
        .prepare_cached(&sql)?
        .execute((queue, cutoff, offset, limit as i64))?;
    Ok(changed as u64)
}

const NEXT_RUN_AT_SQL: &str = "SELECT min(run_at) FROM tasks INDEXED BY tasks_due
     WHERE queue = ?1 AND status = 'pending' AND run_at > updated_at";

/// The earliest run_at among delayed pending tasks (see `Store::next_run_at`).
pub fn next_run_at(conn: &Connection, queue: &str) -> Result<Option<Millis>> {
    Ok(conn
        .prepare_cached(NEXT_RUN_AT_SQL)?
        .query_row([queue], |r| r.get(0))?)
}

/// Raises the priority of up to `limit` pending tasks of `queue` that waited `every_ms`
/// since they were enqueued, retried or last raised (`updated_at` marks the last raise).
pub fn age_batch(
    tx: &Transaction<'_>,
    queue: &str,
    every_ms: Millis,
    step: i64,
    max: i64,
    now: Millis,
    limit: usize,
) -> Result<u64> {
    let aged = tx
        .prepare_cached(
            "UPDATE tasks SET priority = min(priority + ?3, ?4), updated_at = ?5
             WHERE id IN (SELECT id FROM tasks INDEXED BY tasks_ready
                          WHERE queue = ?1 AND status = 'pending' AND run_at <= updated_at
                            AND run_at <= ?5
                            AND updated_at <= ?5 - ?2 AND priority < ?4
                          LIMIT ?6)",
        )?
        .execute((queue, every_ms, step, max, now, limit as i64))?;
    Ok(aged as u64)
}

#[cfg(test)]
mod tests {
    use super::super::{Options, SqliteStore};
    use crate::store::Store;
    use crate::task::TaskStatus;

    /// Counting and listing by status go through the partial indexes, never the whole
    /// table (a million finished tasks retained must not slow a status page): since pending
    /// tasks are in two indexes (ready and delayed), `status = 'pending'` alone matched
    /// none and these walked every row.
    #[test]
    fn status_queries_never_walk_the_table() {
        use super::super::{listing, query_plan, resource_groups};
        for (name, plan) in [
            ("counts", query_plan(super::COUNTS_SQL, ["q"])),
            ("queue names", query_plan(listing::QUEUE_NAMES_SQL, [])),
            (
                "group counts",
                query_plan(resource_groups::GROUP_COUNTS_SQL, ["q", "g"]),
            ),
            (
                "group names",
                query_plan(resource_groups::GROUP_NAMES_SQL, ["q"]),
            ),
        ] {
            for line in plan.lines() {
                assert!(
                    line.trim() != "SCAN tasks",
                    "{name} walks the table:\n{plan}"
                );
            }
        }
        // The two pending arms of the counts read their index alone.
        let counts = query_plan(super::COUNTS_SQL, ["q"]);
        assert!(counts.contains("COVERING INDEX tasks_ready"), "{counts}");
        assert!(counts.contains("COVERING INDEX tasks_due"), "{counts}");
    }

    #[test]
    fn next_run_at_searches_the_delayed_index() {
        let plan = super::super::query_plan(super::NEXT_RUN_AT_SQL, ["q"]);
        assert!(plan.contains("INDEX tasks_due (queue=?)"), "{plan}");
    }

    #[test]
    fn pruning_and_dead_counts_use_the_finished_index() {
        let sqls = [
            "SELECT id FROM tasks WHERE queue = ?1 AND status = 'dead' AND finished_at < ?2
               AND status NOT IN ('pending', 'running')",
            "SELECT count(*) FROM tasks WHERE queue = ?1 AND status = 'dead' AND finished_at >= ?2
               AND status NOT IN ('pending', 'running')",
        ];
        for sql in sqls {
            let plan = super::super::query_plan(sql, ("q", 1));
            assert!(plan.contains("tasks_finished"), "{plan}");
        }
    }

    #[test]
    fn history_written_before_derivation_is_not_doubled() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("q.db"), Options::default()).unwrap();
        let new = crate::store::testing::task("t", 0);
        let id = store.enqueue("q", &[new]).unwrap()[0].id;
        let t = store.claim("q", "w", 1, 30_000).unwrap().remove(0);
        store.complete(id, t.token, b"null").unwrap();
        // What an older ferroq stored for the same run.
        store
            .with_conn(
                |l| &l.writer,
                |conn| {
                    conn.execute(
                        "INSERT INTO task_history (task_id, from_status, to_status, at, worker)
                         SELECT id, 'pending', 'running', started_at, lease_owner FROM tasks
                         UNION ALL
                         SELECT id, 'running', 'completed', finished_at, lease_owner FROM tasks",
                        [],
                    )?;
                    Ok(())
                },
            )
            .unwrap();
        let path: Vec<_> = store
            .history("q", id)
            .unwrap()
            .iter()
            .map(|t| t.to)
            .collect();
        use TaskStatus::*;
        assert_eq!(path, vec![Pending, Running, Completed]);
    }
}
