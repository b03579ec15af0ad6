//! Listings, bulk requeue and purge for operators, and claims restricted to some groups
//! (see `store::Operations`).

use rusqlite::{Connection, Row, Transaction};

use super::decode::Lenient;
use super::{SqliteStore, admin, schedules};
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::json;
use crate::metrics::Counter;
use crate::store::import::FinishedTask;
use crate::store::operations::{
    CancelCursor, CancelStep, Cursor, Finished, Operations, Page, PendingTasks, Schedule, Step,
    TaskFilter,
};
use crate::task::{ClaimedTask, Enqueued, NewTask, TaskId, TaskRecord, TaskStatus};
use crate::validate;

/// The columns of a `TaskRecord`, for `FROM tasks t LEFT JOIN task_results r`.
/// A large payload is stored apart (schema 4), its row keeping an empty one.
pub const RECORD_COLUMNS: &str = "t.id, t.queue, t.name, t.status, t.priority, t.resource_group,
    CASE WHEN length(t.payload) = 0
         THEN coalesce((SELECT p.payload FROM task_payloads p WHERE p.task_id = t.id), t.payload)
         ELSE t.payload END,
    t.attempts, t.max_attempts, t.run_at, t.unique_key, t.progress, t.lease_owner,
    t.lease_expires_at, t.last_error, r.result, t.created_at, t.updated_at, t.started_at,
    t.finished_at, t.progress_message";

/// A row selected with `RECORD_COLUMNS`. A value of the wrong type (a row edited by hand)
/// does not fail the read: the record says which column in `corrupt` (see `decode`).
pub fn record(r: &Row<'_>) -> rusqlite::Result<TaskRecord> {
    let mut d = Lenient::new(r);
    let mut t = TaskRecord {
        id: r.get(0)?,
        queue: d.text(1, "queue")?,
        name: d.text(2, "name")?,
        // The table's CHECK admits only the statuses.
        status: r.get(3)?,
        priority: d.int(4, "priority")?,
        resource_group: d.text(5, "resource_group")?,
        payload: d.blob(6, "payload")?,
        attempts: d.int(7, "attempts")?,
        max_attempts: d.int(8, "max_attempts")?,
        run_at: d.int(9, "run_at")?,
        unique_key: d.opt_text(10, "unique_key")?,
        progress: d.opt_real(11, "progress")?,
        lease_owner: d.opt_text(12, "lease_owner")?,
        lease_expires_at: d.opt_int(13, "lease_expires_at")?,
        last_error: d.opt_text(14, "last_error")?,
        result: d.opt_blob(15, "result")?,
        created_at: d.int(16, "created_at")?,
        updated_at: d.int(17, "updated_at")?,
        started_at: d.opt_int(18, "started_at")?,
        finished_at: d.opt_int(19, "finished_at")?,
        progress_message: d.opt_text(20, "progress_message")?,
        corrupt: None,
    };
    t.corrupt = d.bad;
    Ok(t)
}

/// A listing walks the table by primary key from the cursor (`NOT INDEXED` keeps the
/// rowid range but no secondary index, whose order is not id order): a page costs the rows
/// read until it is full, and a whole listing (an export) is one pass over the table.
fn list_sql(newest_first: bool) -> String {
    let (cmp, bound, order) = if newest_first {
        ("<", ">=", "DESC")
    } else {
        (">", "<=", "ASC")
    };
    format!(
        "SELECT {RECORD_COLUMNS} FROM tasks AS t NOT INDEXED
             LEFT JOIN task_results r ON r.task_id = t.id
         WHERE t.id {cmp} ?2 AND t.id {bound} ?7 AND t.queue = ?1
           AND (?3 IS NULL OR t.status IN (SELECT value FROM json_each(?3)))
           AND (?4 IS NULL OR t.resource_group = ?4) AND (?5 IS NULL OR t.name = ?5)
         ORDER BY t.id {order} LIMIT ?6"
    )
}

pub fn list(
    conn: &Connection,
    queue: &str,
    filter: &TaskFilter,
    page: Page,
) -> Result<Vec<TaskRecord>> {
    let (start, end) = if page.newest_first {
        (TaskId::MAX, TaskId::MIN)
    } else {
        (TaskId::MIN, TaskId::MAX)
    };
    let (after, until) = (page.after.unwrap_or(start), page.until.unwrap_or(end));
    let statuses = (!filter.statuses.is_empty())
        .then(|| json::strings(filter.statuses.iter().map(|s| s.as_str())));
    let mut stmt = conn.prepare_cached(&list_sql(page.newest_first))?;
    let rows = stmt.query_map(
        (
            queue,
            after,
            statuses,
            &filter.group,
            &filter.name,
            page.limit as i64,
            until,
        ),
        record,
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Finished tasks of one status in `tasks_finished` order, so each batch of a bulk
/// operation reads only its own entries. The status is spelled into the SQL, next to the
/// index's own condition: SQLite uses a partial index only when the query repeats its
/// `WHERE` (it does not see that `status = 'dead'` implies it).
fn finished_sql(select: &str, status: TaskStatus) -> String {
    // Checked at the entry points (`validate::finished`).
    debug_assert!(!matches!(status, TaskStatus::Pending | TaskStatus::Running));
    let status = status.as_str();
    format!(
        "SELECT {select} FROM tasks INDEXED BY tasks_finished
         WHERE queue = ?1 AND status NOT IN ('pending', 'running')
           AND status = '{status}' AND finished_at < ?2
           AND (?3 IS NULL OR resource_group = ?3) AND (?4 IS NULL OR name = ?4)"
    )
}

fn before(which: &Finished) -> Millis {
    which.finished_before.unwrap_or(Millis::MAX)
}

pub fn count_finished(conn: &Connection, queue: &str, which: &Finished) -> Result<u64> {
    let sql = finished_sql("count(*)", which.status);
    let n: i64 = conn
        .prepare_cached(&sql)?
        .query_row((queue, before(which), &which.group, &which.name), |r| {
            r.get(0)
        })?;
    Ok(n as u64)
}

/// The next batch of matching finished tasks: (finished_at, id), in index order.
fn select_batch(
    tx: &Transaction<'_>,
    queue: &str,
    which: &Finished,
    after: Option<Cursor>,
    limit: usize,
) -> Result<Vec<Cursor>> {
    let sql = format!(
        "{} AND (finished_at, id) > (?5, ?6) ORDER BY finished_at, id LIMIT ?7",
        finished_sql("finished_at, id", which.status)
    );
    let (at, id) = after.unwrap_or((Millis::MIN, TaskId::MIN));
    let mut stmt = tx.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        (
            queue,
            before(which),
            &which.group,
            &which.name,
            at,
            id,
            limit as i64,
        ),
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn next(batch: &[Cursor], limit: usize) -> Option<Cursor> {
    (batch.len() >= limit).then(|| *batch.last().expect("a full batch"))
}

pub fn purge_batch(
    tx: &Transaction<'_>,
    queue: &str,
    which: &Finished,
    after: Option<Cursor>,
    limit: usize,
) -> Result<Step> {
    let batch = select_batch(tx, queue, which, after, limit)?;
    // The `tasks_pruned` trigger takes results and history with each task.
    let done = tx
        .prepare_cached("DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?1))")?
        .execute([json::ids(batch.iter().map(|c| c.1))])?;
    Ok(Step {
        done: done as u64,
        skipped: Vec::new(),
        next: next(&batch, limit),
    })
}

pub fn requeue_batch(
    tx: &Transaction<'_>,
    queue: &str,
    which: &Finished,
    after: Option<Cursor>,
    limit: usize,
    now: Millis,
) -> Result<Step> {
    let batch = select_batch(tx, queue, which, after, limit)?;
    let mut step = Step {
        next: next(&batch, limit),
        ..Step::default()
    };
    for &(_, id) in &batch {
        match admin::requeue(tx, queue, id, now) {
            Ok(()) => step.done += 1,
            // Its unique key is held by an unfinished task: leave it dead, report it.
            Err(Error::Refused(_)) => step.skipped.push(id),
            Err(other) => return Err(other),
        }
    }
    Ok(step)
}

/// Matching pending tasks: one arm per partial index (ready, delayed), each read alone.
const COUNT_PENDING_SQL: &str = "SELECT
     (SELECT count(*) FROM tasks INDEXED BY tasks_ready
      WHERE queue = ?1 AND status = 'pending' AND run_at <= updated_at
        AND (?2 IS NULL OR resource_group = ?2) AND (?3 IS NULL OR name = ?3))
   + (SELECT count(*) FROM tasks INDEXED BY tasks_due
      WHERE queue = ?1 AND status = 'pending' AND run_at > updated_at
        AND (?2 IS NULL OR resource_group = ?2) AND (?3 IS NULL OR name = ?3))";

pub fn count_pending(conn: &Connection, queue: &str, which: &PendingTasks) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached(COUNT_PENDING_SQL)?
        .query_row((queue, &which.group, &which.name), |r| r.get(0))?;
    Ok(n as u64)
}

/// Cancels the next batch of matching pending tasks by id (one pass over the ids, bounded by
/// the newest task when the bulk cancel began); returns the step and the groups cancelled in.
pub fn cancel_batch(
    tx: &Transaction<'_>,
    queue: &str,
    which: &PendingTasks,
    at: Option<CancelCursor>,
    limit: usize,
    now: Millis,
) -> Result<(CancelStep, Vec<String>)> {
    let CancelCursor { after, through } = match at {
        Some(at) => at,
        None => CancelCursor {
            after: 0,
            through: tx.query_row("SELECT coalesce(max(id), 0) FROM tasks", [], |r| r.get(0))?,
        },
    };
    let ids: Vec<TaskId> = tx
        .prepare_cached(
            "SELECT id FROM tasks
             WHERE id > ?4 AND id <= ?5 AND queue = ?1 AND status = 'pending'
               AND (?2 IS NULL OR resource_group = ?2) AND (?3 IS NULL OR name = ?3)
             ORDER BY id LIMIT ?6",
        )?
        .query_map(
            (
                queue,
                &which.group,
                &which.name,
                after,
                through,
                limit as i64,
            ),
            |r| r.get(0),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let mut groups = Vec::with_capacity(ids.len());
    for &id in &ids {
        groups.push(admin::cancel(tx, queue, id, now)?);
    }
    let step = CancelStep::after_batch(&ids, limit, groups.len() as u64, through);
    Ok((step, groups))
}

/// One arm per partial index (pending tasks are in two: ready and delayed), so no arm
/// walks the table.
pub(super) const QUEUE_NAMES_SQL: &str = "SELECT queue FROM queues
     UNION SELECT queue FROM resource_groups
     UNION SELECT DISTINCT queue FROM tasks WHERE status = 'pending' AND run_at <= updated_at
     UNION SELECT DISTINCT queue FROM tasks WHERE status = 'pending' AND run_at > updated_at
     UNION SELECT DISTINCT queue FROM tasks WHERE status = 'running'
     UNION SELECT DISTINCT queue FROM tasks WHERE status NOT IN ('pending', 'running')
     ORDER BY 1";

pub fn queue_names(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(QUEUE_NAMES_SQL)?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn task_names_like(conn: &Connection, queue: &str, name: &str) -> Result<Vec<String>> {
    // substr, not LIKE: LIKE is case-insensitive and reads `_` and `%` in names as wildcards.
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT name FROM tasks
         WHERE queue = ?1 AND (name = ?2 OR (length(name) > length(?2)
                                             AND substr(name, -length(?2) - 1) = '.' || ?2))
         ORDER BY name",
    )?;
    let rows = stmt.query_map((queue, name), |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Operations for SqliteStore {
    fn list(&self, queue: &str, filter: &TaskFilter, page: Page) -> Result<Vec<TaskRecord>> {
        if page.limit == 0 {
            return Ok(Vec::new());
        }
        self.read(|conn, _| list(conn, queue, filter, page))
    }

    fn count_finished(&self, queue: &str, which: &Finished) -> Result<u64> {
        validate::finished(which)?;
        self.read(|conn, _| count_finished(conn, queue, which))
    }

    fn purge_batch(
        &self,
        queue: &str,
        which: &Finished,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Step> {
        validate::finished(which)?;
        self.write(|tx, _| purge_batch(tx, queue, which, after, limit.max(1)))
    }

    fn requeue_batch(
        &self,
        queue: &str,
        which: &Finished,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Step> {
        validate::requeue(which)?;
        self.write(|tx, now| requeue_batch(tx, queue, which, after, limit.max(1), now))
    }

    fn count_pending(&self, queue: &str, which: &PendingTasks) -> Result<u64> {
        self.read(|conn, _| count_pending(conn, queue, which))
    }

    fn cancel_batch(
        &self,
        queue: &str,
        which: &PendingTasks,
        at: Option<CancelCursor>,
        limit: usize,
    ) -> Result<CancelStep> {
        let (step, groups) =
            self.write(|tx, now| cancel_batch(tx, queue, which, at, limit.max(1), now))?;
        let mut metrics = self.local.get().metrics.lock();
        for group in &groups {
            metrics.count(queue, group, Counter::Cancelled, 1);
        }
        Ok(step)
    }

    fn claim_in_groups(
        &self,
        queue: &str,
        groups: &[String],
        worker: &str,
        limit: usize,
        lease_ms: Millis,
    ) -> Result<Vec<ClaimedTask>> {
        validate::claim_groups(groups)?;
        let mut only = groups.to_vec();
        only.sort_unstable();
        only.dedup();
        self.lease_ready(queue, Some(&only), worker, limit, lease_ms)
    }

    fn queue_names(&self) -> Result<Vec<String>> {
        self.read(|conn, _| queue_names(conn))
    }

    fn declare_schedule(&self, queue: &str, schedule: &Schedule, now: Millis) -> Result<Schedule> {
        validate::name("queue", queue)?;
        validate::name("schedule", &schedule.name)?;
        validate::name("task", &schedule.task)?;
        self.write(|tx, _| schedules::declare(tx, queue, schedule, now))
    }

    fn enqueue_tick(
        &self,
        queue: &str,
        name: &str,
        tick: Millis,
        task: &NewTask,
    ) -> Result<Option<Enqueued>> {
        validate::new_tasks(std::slice::from_ref(task), self.options.max_payload)?;
        let done = self.write(|tx, now| {
            schedules::enqueue_tick(tx, queue, name, tick, task, self.options.task_events, now)
        })?;
        if let Some(e) = done {
            self.count_enqueued(queue, std::slice::from_ref(task), &[e]);
        }
        Ok(done)
    }

    fn schedules(&self, queue: &str) -> Result<Vec<Schedule>> {
        self.read(|conn, _| schedules::list(conn, queue))
    }

    fn task_names_like(&self, queue: &str, name: &str) -> Result<Vec<String>> {
        self.read(|conn, _| task_names_like(conn, queue, name))
    }

    fn clear_cache(&self, queue: &str, name: &str, key: Option<&str>) -> Result<u64> {
        self.write(|tx, _| super::enqueue::clear_cache(tx, queue, name, key))
    }

    fn import_finished(&self, queue: &str, tasks: &[FinishedTask]) -> Result<Vec<TaskId>> {
        validate::name("queue", queue)?;
        crate::store::import::validate(tasks, self.options.max_payload)?;
        self.write(|tx, _| super::import::insert_all(tx, queue, tasks))
    }
}

#[cfg(test)]
mod tests {
    use super::super::query_plan as plan;
    use super::{finished_sql, list_sql};
    use crate::task::TaskStatus;

    #[test]
    fn a_listing_page_is_a_primary_key_range_without_sorting() {
        for newest_first in [false, true] {
            let p = plan(
                &list_sql(newest_first),
                (
                    "q",
                    5,
                    None::<String>,
                    None::<String>,
                    None::<String>,
                    10,
                    1,
                ),
            );
            // Both ends of the window bound the range: a page never reads past `until`.
            assert!(
                p.contains("INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
                "{p}"
            );
            assert!(!p.contains("TEMP B-TREE"), "{p}");
        }
    }

    #[test]
    fn bulk_batches_walk_the_finished_index_without_sorting() {
        let sql = format!(
            "{} AND (finished_at, id) > (?5, ?6) ORDER BY finished_at, id LIMIT ?7",
            finished_sql("finished_at, id", TaskStatus::Dead)
        );
        let p = plan(&sql, ("q", 1, None::<String>, None::<String>, 0, 0, 10));
        assert!(p.contains("tasks_finished"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
    }
}
