//! Reads and operator actions: get, cancel, requeue, history, counts, retention, pauses.

use postgres::GenericClient;

use super::events;
use super::history;
use super::pool::Db;
use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::policy::retention::{Keep, Retention};
use crate::task::{TaskId, TaskRecord, TaskStatus, Transition};

fn status(text: &str) -> Result<TaskStatus> {
    TaskStatus::parse(text)
}

/// The columns `record` reads, from `tasks t` and `task_results r`.
pub const RECORD_COLUMNS: &str = "t.id, t.queue, t.name, t.status, t.priority, t.resource_group,
    coalesce((SELECT p.payload FROM task_payloads p WHERE p.task_id = t.id), ''::bytea),
    t.attempts, t.max_attempts, t.run_at, t.unique_key, t.progress, t.lease_owner,
    t.lease_expires_at, t.last_error, r.result, t.created_at, t.updated_at, t.started_at,
    t.finished_at, t.progress_message";

/// A row selected with `RECORD_COLUMNS` (the server's types admit no corrupt value).
pub fn record(r: &postgres::Row) -> Result<TaskRecord> {
    Ok(TaskRecord {
        id: r.get(0),
        queue: r.get(1),
        name: r.get(2),
        status: status(r.get(3))?,
        priority: r.get(4),
        resource_group: r.get(5),
        payload: r.get(6),
        attempts: r.get(7),
        max_attempts: r.get(8),
        run_at: r.get(9),
        unique_key: r.get(10),
        progress: r.get(11),
        lease_owner: r.get(12),
        lease_expires_at: r.get(13),
        last_error: r.get(14),
        result: r.get(15),
        created_at: r.get(16),
        updated_at: r.get(17),
        started_at: r.get(18),
        finished_at: r.get(19),
        progress_message: r.get(20),
        corrupt: None,
    })
}

pub fn get<C: GenericClient>(db: &mut Db<'_, C>, queue: &str, id: TaskId) -> Result<TaskRecord> {
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM tasks t LEFT JOIN task_results r ON r.task_id = t.id
         WHERE t.id = $1 AND t.queue = $2"
    );
    let row = db
        .query_opt(&sql, &[&id, &queue])?
        .ok_or(Error::UnknownTask(id))?;
    record(&row)
}

fn existing_status<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    id: TaskId,
) -> Result<TaskStatus> {
    let row = db
        .query_opt(
            "SELECT status FROM tasks WHERE id = $1 AND queue = $2",
            &[&id, &queue],
        )?
        .ok_or(Error::UnknownTask(id))?;
    status(row.get(0))
}

/// pending -> cancelled; returns the task's resource group.
pub fn cancel<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    id: TaskId,
    now: Millis,
) -> Result<String> {
    let row = db.query_opt(
        "UPDATE tasks SET status = 'cancelled', finished_at = $3, updated_at = $3
         WHERE id = $1 AND queue = $2 AND status = 'pending'
         RETURNING resource_group",
        &[&id, &queue, &now],
    )?;
    let Some(row) = row else {
        let status = existing_status(db, queue, id)?;
        return Err(Error::InvalidTransition {
            id,
            action: "cancel",
            status,
        });
    };
    let group: String = row.get(0);
    history::append(
        db,
        &[history::Row {
            task_id: id,
            from: Some(TaskStatus::Pending),
            to: TaskStatus::Cancelled,
            at: now,
            worker: None,
            error: None,
        }],
    )?;
    events::record_task(db, queue, Some(&group), Some(id), "cancelled", "{}", now)?;
    Ok(group)
}

/// dead or cancelled -> pending, attempts reset.
pub fn requeue<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    id: TaskId,
    now: Millis,
) -> Result<()> {
    // Locked: a concurrent requeue of the same task waits, then sees it pending.
    let row = db
        .query_opt(
            "SELECT status FROM tasks WHERE id = $1 AND queue = $2 FOR UPDATE",
            &[&id, &queue],
        )?
        .ok_or(Error::UnknownTask(id))?;
    let was = status(row.get(0))?;
    if !matches!(was, TaskStatus::Dead | TaskStatus::Cancelled) {
        return Err(Error::InvalidTransition {
            id,
            action: "requeue",
            status: was,
        });
    }
    let holder = db.query_opt(
        "SELECT other.id FROM tasks this JOIN tasks other
           ON other.queue = this.queue AND other.unique_key = this.unique_key
         WHERE this.id = $1 AND other.status IN ('pending', 'running')",
        &[&id],
    )?;
    if let Some(holder) = holder {
        let holder: TaskId = holder.get(0);
        return Err(Error::Refused(format!(
            "cannot requeue task {id}: its unique key is held by unfinished task {holder}"
        )));
    }
    db.execute(
        "UPDATE tasks SET status = 'pending', attempts = 0, run_at = $2, updated_at = $2,
                          finished_at = NULL, progress = NULL, progress_message = NULL
         WHERE id = $1",
        &[&id, &now],
    )?;
    history::append(
        db,
        &[history::Row {
            task_id: id,
            from: Some(was),
            to: TaskStatus::Pending,
            at: now,
            worker: None,
            error: None,
        }],
    )
}

/// Every transition of a task, oldest first: the enqueue and a completed (or current) run
/// are derived from the task's row; other runs and operator actions are stored rows.
pub fn history<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    id: TaskId,
) -> Result<Vec<Transition>> {
    let row = db
        .query_opt(
            "SELECT created_at, status, started_at, finished_at, lease_owner FROM tasks
             WHERE id = $1 AND queue = $2",
            &[&id, &queue],
        )?
        .ok_or(Error::UnknownTask(id))?;
    let created_at: Millis = row.get(0);
    let now_status = status(row.get(1))?;
    let started_at: Option<Millis> = row.get(2);
    let finished_at: Option<Millis> = row.get(3);
    let worker: Option<String> = row.get(4);
    let stored: Vec<Transition> = db
        .query(
            "SELECT from_status, to_status, at, worker, error FROM task_history
             WHERE task_id = $1 ORDER BY id",
            &[&id],
        )?
        .iter()
        .map(|r| {
            Ok(Transition {
                from: r.get::<_, Option<&str>>(0).map(status).transpose()?,
                to: status(r.get(1))?,
                at: r.get(2),
                worker: r.get(3),
                error: r.get(4),
            })
        })
        .collect::<Result<_>>()?;
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
    if matches!(now_status, TaskStatus::Running | TaskStatus::Completed) {
        tail.extend(derived(
            TaskStatus::Pending,
            TaskStatus::Running,
            started_at,
        ));
    }
    if now_status == TaskStatus::Completed {
        tail.extend(derived(
            TaskStatus::Running,
            TaskStatus::Completed,
            finished_at,
        ));
    }
    let enqueued = Transition {
        from: None,
        to: TaskStatus::Pending,
        at: created_at,
        worker: None,
        error: None,
    };
    Ok(std::iter::once(enqueued)
        .chain(stored)
        .chain(tail)
        .collect())
}

/// One arm per partial index, so counting never walks the whole table.
const COUNTS_SQL: &str = "SELECT 'pending', count(*) FROM tasks
     WHERE queue = $1 AND status = 'pending' AND run_at <= updated_at
     UNION ALL
     SELECT 'pending', count(*) FROM tasks
     WHERE queue = $1 AND status = 'pending' AND run_at > updated_at
     UNION ALL
     SELECT 'running', count(*) FROM tasks WHERE queue = $1 AND status = 'running'
     UNION ALL
     SELECT status, count(*) FROM tasks
     WHERE queue = $1 AND status IN ('completed', 'dead', 'cancelled') GROUP BY status";

/// Tasks per status, every status listed.
pub fn counts<C: GenericClient>(db: &mut Db<'_, C>, queue: &str) -> Result<Vec<(TaskStatus, u64)>> {
    let found: Vec<(TaskStatus, u64)> = db
        .query(COUNTS_SQL, &[&queue])?
        .iter()
        .map(|r| Ok((status(r.get(0))?, r.get::<_, i64>(1) as u64)))
        .collect::<Result<_>>()?;
    Ok(TaskStatus::ALL
        .into_iter()
        .map(|s| {
            let n = found.iter().filter(|(f, _)| *f == s).map(|(_, n)| n).sum();
            (s, n)
        })
        .collect())
}

/// Deletes up to `limit` finished tasks that break the retention; returns how many.
pub fn prune_batch<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    retention: &Retention,
    now: Millis,
    limit: u64,
) -> Result<u64> {
    let mut deleted = 0;
    for (keep, statuses) in [
        (
            &retention.completed,
            &[TaskStatus::Completed, TaskStatus::Cancelled][..],
        ),
        (&retention.dead, &[TaskStatus::Dead][..]),
    ] {
        for status in statuses {
            if deleted >= limit {
                return Ok(deleted);
            }
            deleted += prune_status(db, queue, *status, keep, now, limit - deleted)?;
        }
    }
    Ok(deleted)
}

/// Deletes tasks and what lives apart from them (payload, result, history) in one statement.
const DELETE_TASKS_SQL: &str = "WITH gone AS (DELETE FROM tasks WHERE id = ANY($1) RETURNING id),
     p AS (DELETE FROM task_payloads WHERE task_id IN (SELECT id FROM gone)),
     r AS (DELETE FROM task_results WHERE task_id IN (SELECT id FROM gone)),
     h AS (DELETE FROM task_history WHERE task_id IN (SELECT id FROM gone))
     SELECT count(*) FROM gone";

pub fn delete_tasks<C: GenericClient>(db: &mut Db<'_, C>, ids: &[TaskId]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(db.query_one(DELETE_TASKS_SQL, &[&ids])?.get::<_, i64>(0) as u64)
}

fn prune_status<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    status: TaskStatus,
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
    let ids: Vec<TaskId> = db
        .query(
            "SELECT id FROM tasks
             WHERE queue = $1 AND status = $2 AND status IN ('completed', 'dead', 'cancelled')
               AND finished_at < $3
             UNION
             SELECT id FROM (SELECT id FROM tasks
                             WHERE queue = $1 AND status = $2
                               AND status IN ('completed', 'dead', 'cancelled')
                               AND $4::bigint IS NOT NULL
                             ORDER BY finished_at DESC, id DESC
                             OFFSET coalesce($4::bigint, 0)) AS beyond
             LIMIT $5",
            &[&queue, &status.as_str(), &cutoff, &offset, &(limit as i64)],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    delete_tasks(db, &ids)
}

/// The earliest run_at among delayed pending tasks (see `Store::next_run_at`).
pub fn next_run_at<C: GenericClient>(db: &mut Db<'_, C>, queue: &str) -> Result<Option<Millis>> {
    Ok(db
        .query_one(
            "SELECT min(run_at) FROM tasks
             WHERE queue = $1 AND status = 'pending' AND run_at > updated_at",
            &[&queue],
        )?
        .get(0))
}

pub fn queue_paused<C: GenericClient>(db: &mut Db<'_, C>, queue: &str) -> Result<bool> {
    Ok(db
        .query_opt("SELECT paused FROM queues WHERE queue = $1", &[&queue])?
        .is_some_and(|r| r.get(0)))
}

pub fn set_queue_paused<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    paused: bool,
    now: Millis,
) -> Result<bool> {
    let changed = if paused {
        db.execute(
            "INSERT INTO queues (queue, paused, updated_at) VALUES ($1, true, $2)
             ON CONFLICT (queue) DO UPDATE SET paused = true, updated_at = $2
             WHERE NOT queues.paused",
            &[&queue, &now],
        )?
    } else {
        db.execute("DELETE FROM queues WHERE queue = $1 AND paused", &[&queue])?
    };
    if changed > 0 {
        let kind = if paused {
            "queue_paused"
        } else {
            "queue_resumed"
        };
        events::record_task(db, queue, None, None, kind, "{}", now)?;
    }
    Ok(changed > 0)
}

pub fn queue_names<C: GenericClient>(db: &mut Db<'_, C>) -> Result<Vec<String>> {
    Ok(db
        .query(
            "SELECT queue FROM queues UNION SELECT queue FROM resource_groups
             UNION SELECT DISTINCT queue FROM tasks ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The latest time stored (newest task, newest event): a floor for this process's clock.
pub fn latest_stored_time<C: GenericClient>(db: &mut Db<'_, C>) -> Result<Option<Millis>> {
    let t: Millis = db
        .query_one(
            "SELECT greatest(coalesce((SELECT created_at FROM tasks ORDER BY id DESC LIMIT 1), 0),
                             coalesce((SELECT at FROM events ORDER BY id DESC LIMIT 1), 0))",
            &[],
        )?
        .get(0);
    Ok((t > 0).then_some(t))
}

/// Server settings that matter to a queue, as the server reports them, and the dead row
/// versions of each table of the queue's schema (what autovacuum has yet to reclaim: every
/// transition leaves one behind).
pub fn settings<C: GenericClient>(db: &mut Db<'_, C>) -> Result<Vec<(String, String)>> {
    let dead = db.query(
        "SELECT relname || '.dead_tuples', n_dead_tup::text FROM pg_stat_user_tables
         WHERE schemaname = current_schema() ORDER BY relname",
        &[],
    )?;
    Ok(db
        .query(
            "SELECT name, setting FROM pg_settings
             WHERE name IN ('server_version', 'synchronous_commit', 'fsync',
                            'max_connections', 'autovacuum', 'default_transaction_isolation')
             ORDER BY name",
            &[],
        )?
        .iter()
        .chain(dead.iter())
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}
