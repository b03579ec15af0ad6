//! Operators' reads and bulk actions: listings by keyset pagination, purge and requeue in
//! small batches, task-name lookup, priority aging (as the SQLite engine's `listing.rs`).

use postgres::GenericClient;

use super::admin::{self, RECORD_COLUMNS, record};
use super::pool::Db;
use super::{events, history};
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::store::operations::{
    CancelCursor, CancelStep, Cursor, Finished, Page, PendingTasks, Step, TaskFilter,
};
use crate::task::{TaskId, TaskRecord, TaskStatus};

/// One page in id order (a primary-key range: the same cost at any depth).
pub fn list<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    filter: &TaskFilter,
    page: Page,
) -> Result<Vec<TaskRecord>> {
    // `until` ends the page at that id (inclusive), full or not: a bounded window of ids.
    let (cmp, bound, order, start, end) = if page.newest_first {
        ("<", ">=", "DESC", TaskId::MAX, TaskId::MIN)
    } else {
        (">", "<=", "ASC", TaskId::MIN, TaskId::MAX)
    };
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM tasks t LEFT JOIN task_results r ON r.task_id = t.id
         WHERE t.id {cmp} $2 AND t.id {bound} $7 AND t.queue = $1
           AND ($3::text[] IS NULL OR t.status = ANY($3))
           AND ($4::text IS NULL OR t.resource_group = $4) AND ($5::text IS NULL OR t.name = $5)
         ORDER BY t.id {order} LIMIT $6"
    );
    let statuses: Option<Vec<&str>> =
        (!filter.statuses.is_empty()).then(|| filter.statuses.iter().map(|s| s.as_str()).collect());
    let after = page.after.unwrap_or(start);
    db.query(
        &sql,
        &[
            &queue,
            &after,
            &statuses,
            &filter.group,
            &filter.name,
            &(page.limit as i64),
            &page.until.unwrap_or(end),
        ],
    )?
    .iter()
    .map(record)
    .collect()
}

/// Finished tasks matching `which`, from the finished index.
const FINISHED_WHERE: &str = "queue = $1 AND status IN ('completed', 'dead', 'cancelled')
     AND status = $2 AND finished_at < $3
     AND ($4::text IS NULL OR resource_group = $4) AND ($5::text IS NULL OR name = $5)";

fn before(which: &Finished) -> Millis {
    which.finished_before.unwrap_or(Millis::MAX)
}

pub fn count_finished<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    which: &Finished,
) -> Result<u64> {
    let n: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM tasks WHERE {FINISHED_WHERE}"),
            &[
                &queue,
                &which.status.as_str(),
                &before(which),
                &which.group,
                &which.name,
            ],
        )?
        .get(0);
    Ok(n as u64)
}

/// The next `limit` matching tasks after `after`, by finish time then id, locked.
fn select_batch<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    which: &Finished,
    after: Option<Cursor>,
    limit: usize,
) -> Result<Vec<Cursor>> {
    let (at, id) = after.unwrap_or((Millis::MIN, TaskId::MIN));
    Ok(db
        .query(
            &format!(
                "SELECT finished_at, id FROM tasks WHERE {FINISHED_WHERE}
                   AND (finished_at, id) > ($6, $7)
                 ORDER BY finished_at, id LIMIT $8 FOR UPDATE SKIP LOCKED"
            ),
            &[
                &queue,
                &which.status.as_str(),
                &before(which),
                &which.group,
                &which.name,
                &at,
                &id,
                &(limit as i64),
            ],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

fn next(batch: &[Cursor], limit: usize) -> Option<Cursor> {
    (batch.len() >= limit).then(|| *batch.last().expect("a full batch"))
}

pub fn purge_batch<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    which: &Finished,
    after: Option<Cursor>,
    limit: usize,
) -> Result<Step> {
    let batch = select_batch(db, queue, which, after, limit)?;
    let ids: Vec<TaskId> = batch.iter().map(|c| c.1).collect();
    Ok(Step {
        done: admin::delete_tasks(db, &ids)?,
        skipped: Vec::new(),
        next: next(&batch, limit),
    })
}

pub fn requeue_batch<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    which: &Finished,
    after: Option<Cursor>,
    limit: usize,
    now: Millis,
) -> Result<Step> {
    let batch = select_batch(db, queue, which, after, limit)?;
    let mut step = Step {
        next: next(&batch, limit),
        ..Step::default()
    };
    for &(_, id) in &batch {
        match admin::requeue(db, queue, id, now) {
            Ok(()) => step.done += 1,
            Err(Error::Refused(_)) => step.skipped.push(id),
            Err(other) => return Err(other),
        }
    }
    Ok(step)
}

/// Matching pending tasks, ready and delayed (each arm on its partial index).
pub fn count_pending<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    which: &PendingTasks,
) -> Result<u64> {
    let n: i64 = db
        .query_one(
            "SELECT
               (SELECT count(*) FROM tasks
                WHERE queue = $1 AND status = 'pending' AND run_at <= updated_at
                  AND ($2::text IS NULL OR resource_group = $2)
                  AND ($3::text IS NULL OR name = $3))
             + (SELECT count(*) FROM tasks
                WHERE queue = $1 AND status = 'pending' AND run_at > updated_at
                  AND ($2::text IS NULL OR resource_group = $2)
                  AND ($3::text IS NULL OR name = $3))",
            &[&queue, &which.group, &which.name],
        )?
        .get(0);
    Ok(n as u64)
}

/// Cancels the next batch of matching pending tasks by id (see the SQLite engine's), set-based:
/// a statement each to pick, cancel, and write their history and events, whatever the batch
/// size. Rows a claim holds are skipped (they are running: left to their runs). Returns the
/// step and the groups cancelled in.
pub fn cancel_batch<C: GenericClient>(
    db: &mut Db<'_, C>,
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
            through: db
                .query_one("SELECT coalesce(max(id), 0) FROM tasks", &[])?
                .get(0),
        },
    };
    let picked: Vec<TaskId> = db
        .query(
            "SELECT id FROM tasks
             WHERE id > $4 AND id <= $5 AND queue = $1 AND status = 'pending'
               AND ($2::text IS NULL OR resource_group = $2) AND ($3::text IS NULL OR name = $3)
             ORDER BY id LIMIT $6
             FOR UPDATE SKIP LOCKED",
            &[
                &queue,
                &which.group,
                &which.name,
                &after,
                &through,
                &(limit as i64),
            ],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut cancelled: Vec<(TaskId, String)> = if picked.is_empty() {
        Vec::new()
    } else {
        db.query(
            "UPDATE tasks SET status = 'cancelled', finished_at = $2, updated_at = $2
             WHERE id = ANY($1) AND status = 'pending'
             RETURNING id, resource_group",
            &[&picked, &now],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    cancelled.sort_unstable();
    let rows: Vec<history::Row<'_>> = cancelled
        .iter()
        .map(|&(task_id, _)| history::Row {
            task_id,
            from: Some(TaskStatus::Pending),
            to: TaskStatus::Cancelled,
            at: now,
            worker: None,
            error: None,
        })
        .collect();
    history::append(db, &rows)?;
    let ids: Vec<TaskId> = cancelled.iter().map(|(id, _)| *id).collect();
    let groups: Vec<String> = cancelled.into_iter().map(|(_, group)| group).collect();
    events::record_tasks(db, queue, &ids, &groups, "cancelled", "{}", now)?;
    let step = CancelStep::after_batch(&picked, limit, ids.len() as u64, through);
    Ok((step, groups))
}

/// Names equal to `name` or ending in `.{name}` (a dot boundary), sorted.
pub fn task_names_like<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    name: &str,
) -> Result<Vec<String>> {
    Ok(db
        .query(
            "SELECT DISTINCT name FROM tasks
             WHERE queue = $1 AND (name = $2 OR (length(name) > length($2)
                                                 AND right(name, length($2) + 1) = '.' || $2))
             ORDER BY name",
            &[&queue, &name],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Raises the priority of up to `limit` ready tasks that waited `every_ms` since they were
/// enqueued, retried or last raised (`updated_at` marks the last raise).
pub fn age_batch<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    (every_ms, step, max): (Millis, i64, i64),
    now: Millis,
    limit: usize,
) -> Result<u64> {
    db.execute(
        "UPDATE tasks SET priority = least(priority + $3, $4), updated_at = $5
         WHERE id IN (SELECT id FROM tasks
                      WHERE queue = $1 AND status = 'pending' AND run_at <= updated_at
                        AND run_at <= $5 AND updated_at <= $5 - $2 AND priority < $4
                      LIMIT $6 FOR UPDATE SKIP LOCKED)",
        &[&queue, &every_ms, &step, &max, &now, &(limit as i64)],
    )
}
