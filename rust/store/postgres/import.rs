//! Finished tasks of another store, stored as they were (`Operations::import_finished`): one
//! set-based statement per batch, tasks with their payloads, results and history.

use postgres::GenericClient;

use super::pool::Db;
use crate::error::{Error, Result};
use crate::store::import::{FinishedTask, stored_transitions};
use crate::task::{TaskId, TaskStatus};

/// New ids drawn in the batch's order (`WITH ORDINALITY`); each history row names its task by
/// that ordinal and goes in in the order given (history is read back by its own id).
const IMPORT_SQL: &str = "WITH s AS MATERIALIZED (
         SELECT pg_get_serial_sequence('tasks', 'id')::regclass AS seq),
     r AS MATERIALIZED (
         SELECT nextval(s.seq) AS id, u.*
         FROM s, unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[],
                        $7::bigint[], $8::bigint[], $9::text[], $10::text[],
                        $11::float8[], $12::text[], $13::text[], $14::bigint[], $15::bigint[],
                        $16::bigint[], $17::bigint[], $18::bytea[], $19::bytea[])
              WITH ORDINALITY
              AS u(name, grp, priority, run_at, status, attempts, max_attempts, lease_owner,
                   unique_key, progress, progress_message, last_error, created_at,
                   updated_at, started_at, finished_at, payload, result, ord)
         ORDER BY u.ord),
     ins AS (
         INSERT INTO tasks (id, queue, name, resource_group, priority, run_at, status,
                            attempts, max_attempts, lease_owner, unique_key, progress,
                            progress_message, last_error, created_at, updated_at, started_at,
                            finished_at)
         OVERRIDING SYSTEM VALUE
         SELECT id, $1, name, grp, priority, run_at, status, attempts, max_attempts,
                lease_owner, unique_key, progress, progress_message, last_error, created_at,
                updated_at, started_at, finished_at
         FROM r),
     pay AS (
         INSERT INTO task_payloads (task_id, payload)
         SELECT id, payload FROM r WHERE length(payload) > 0),
     res AS (
         INSERT INTO task_results (task_id, result, created_at)
         SELECT id, result, coalesce(finished_at, updated_at) FROM r WHERE result IS NOT NULL),
     hist AS (
         INSERT INTO task_history (task_id, from_status, to_status, at, worker, error)
         SELECT r.id, h.from_status, h.to_status, h.at, h.worker, h.error
         FROM unnest($20::bigint[], $21::text[], $22::text[], $23::bigint[], $24::text[],
                     $25::text[]) WITH ORDINALITY
              AS h(task_ord, from_status, to_status, at, worker, error, ord)
         JOIN r ON r.ord = h.task_ord
         ORDER BY h.ord)
     SELECT ord, id FROM r";

/// Inserts every task in the caller's transaction; returns their new ids in order.
pub fn insert_all<C: GenericClient>(
    db: &mut Db<'_, C>,
    queue: &str,
    tasks: &[FinishedTask],
) -> Result<Vec<TaskId>> {
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let col = |f: fn(&FinishedTask) -> i64| tasks.iter().map(f).collect::<Vec<i64>>();
    let opt = |f: fn(&FinishedTask) -> Option<i64>| tasks.iter().map(f).collect::<Vec<_>>();
    let text = |f: fn(&FinishedTask) -> Option<&str>| tasks.iter().map(f).collect::<Vec<_>>();
    let names = text(|t| Some(&t.record.name));
    let groups = text(|t| Some(&t.record.resource_group));
    let priorities = col(|t| t.record.priority);
    let run_ats = col(|t| t.record.run_at);
    let statuses = text(|t| Some(t.record.status.as_str()));
    let attempts = col(|t| t.record.attempts);
    let max_attempts = col(|t| t.record.max_attempts);
    let owners = text(|t| t.record.lease_owner.as_deref());
    let keys = text(|t| t.record.unique_key.as_deref());
    let progress: Vec<Option<f64>> = tasks.iter().map(|t| t.record.progress).collect();
    let messages = text(|t| t.record.progress_message.as_deref());
    let errors = text(|t| t.record.last_error.as_deref());
    let created = col(|t| t.record.created_at);
    let updated = col(|t| t.record.updated_at);
    let started = opt(|t| t.record.started_at);
    let finished = opt(|t| t.record.finished_at);
    let payloads: Vec<&[u8]> = tasks.iter().map(|t| &*t.record.payload).collect();
    let results: Vec<Option<&[u8]>> = tasks.iter().map(|t| t.record.result.as_deref()).collect();
    let mut h_task = Vec::new();
    let mut h_from: Vec<Option<&str>> = Vec::new();
    let mut h_to = Vec::new();
    let mut h_at = Vec::new();
    let mut h_worker = Vec::new();
    let mut h_error = Vec::new();
    for (ord, task) in (1_i64..).zip(tasks) {
        for t in stored_transitions(task) {
            h_task.push(ord);
            h_from.push(t.from.map(TaskStatus::as_str));
            h_to.push(t.to.as_str());
            h_at.push(t.at);
            h_worker.push(t.worker.as_deref());
            h_error.push(t.error.as_deref());
        }
    }
    let rows = db.query(
        IMPORT_SQL,
        &[
            &queue,
            &names,
            &groups,
            &priorities,
            &run_ats,
            &statuses,
            &attempts,
            &max_attempts,
            &owners,
            &keys,
            &progress,
            &messages,
            &errors,
            &created,
            &updated,
            &started,
            &finished,
            &payloads,
            &results,
            &h_task,
            &h_from,
            &h_to,
            &h_at,
            &h_worker,
            &h_error,
        ],
    )?;
    let mut ids: Vec<(i64, TaskId)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    if ids.len() != tasks.len() {
        return Err(Error::Storage(format!(
            "a {}-task import reported {} rows",
            tasks.len(),
            ids.len()
        )));
    }
    ids.sort_unstable();
    Ok(ids.into_iter().map(|(_, id)| id).collect())
}
