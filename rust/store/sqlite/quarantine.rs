//! Rows a claim cannot read are set aside: dead, with a stored error naming the column and
//! the problem, like any dead-letter (a history row, a "dead" event), in the claim's own
//! transaction. Before, one row edited by hand (a TEXT payload) failed every claim, forever,
//! and no other task ran.

use rusqlite::Transaction;

use super::history;
use crate::clock::Millis;
use crate::error::Result;
use crate::json;
use crate::task::{CorruptColumn, TaskId, TaskStatus};

use super::decode;

/// A row the claim could not read, and why.
#[derive(Debug)]
pub struct Corrupt {
    pub id: TaskId,
    pub bad: CorruptColumn,
}

/// Only pending rows: a claim sets a row aside before it leases anything.
const SET_ASIDE_SQL: &str = "UPDATE tasks
         SET status = 'dead', finished_at = ?2, updated_at = ?2, lease_owner = NULL,
             lease_token = NULL, lease_expires_at = NULL, last_error = ?3
         WHERE id = ?1 AND status = 'pending'";

/// The group is copied only if it is text: a BLOB there may be the very problem.
const DEAD_EVENT_SQL: &str = "INSERT INTO events (at, queue, resource_group, task_id, kind, detail)
         SELECT ?2, queue, iif(typeof(resource_group) = 'text', resource_group, NULL), id,
                'dead', json_object('error', json(?3))
         FROM tasks WHERE id = ?1";

/// The stored error (the shape workers store): `{"type":"CorruptTask","message":...}`.
pub fn error_json(problem: &str) -> String {
    let message = format!("{problem}: the task cannot be read, so it was set aside");
    format!(
        r#"{{"type":"CorruptTask","message":{},"traceback":null}}"#,
        json::string(&message)
    )
}

/// Sends each of `rows` (duplicates allowed) to dead.
pub fn set_aside(tx: &Transaction<'_>, rows: &mut Vec<Corrupt>, now: Millis) -> Result<()> {
    rows.sort_unstable_by_key(|c| c.id);
    rows.dedup_by_key(|c| c.id);
    for c in rows.iter() {
        let error = error_json(&c.bad.problem);
        if tx
            .prepare_cached(SET_ASIDE_SQL)?
            .execute((c.id, now, &error))?
            == 0
        {
            continue;
        }
        log::warn!("task {} set aside as dead: {}", c.id, c.bad.problem);
        history::record(
            tx,
            c.id,
            Some(TaskStatus::Pending),
            TaskStatus::Dead,
            now,
            None,
            Some(&error),
        )?;
        tx.prepare_cached(DEAD_EVENT_SQL)?
            .execute((c.id, now, &error))?;
    }
    Ok(())
}

/// Delayed tasks whose run_at is not a number: TEXT and BLOB sort after every number, so
/// such a task never comes due and would stay pending forever. One index seek.
const UNSCHEDULABLE_SQL: &str = "SELECT id, run_at FROM tasks INDEXED BY tasks_due
         WHERE queue = ?1 AND status = 'pending' AND run_at > updated_at AND run_at >= ''";

/// Sets aside the pending tasks of `queue` that can never come due (see above).
pub fn unschedulable(tx: &Transaction<'_>, queue: &str, now: Millis) -> Result<()> {
    let mut rows: Vec<Corrupt> = tx
        .prepare_cached(UNSCHEDULABLE_SQL)?
        .query_map([queue], |r| {
            Ok(Corrupt {
                id: r.get(0)?,
                bad: decode::bad("run_at", r.get_ref(1)?, "INTEGER"),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    if !rows.is_empty() {
        set_aside(tx, &mut rows, now)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Options, SqliteStore, read_one};
    use crate::error::Error;
    use crate::store::Store;
    use crate::store::operations::{Operations, Page, TaskFilter};
    use crate::store::testing::task;
    use crate::task::{TaskId, TaskStatus};

    /// Runs `sql` on the store's writer, as a hand edit outside ferroq would.
    fn edit(store: &SqliteStore, sql: &str) {
        store.write(|tx, _| Ok(tx.execute_batch(sql)?)).unwrap();
    }

    fn one(store: &SqliteStore) -> TaskId {
        store.enqueue("q", &[task("good", 0)]).unwrap()[0].id
    }

    /// Each hand edit, on a row of its own: (column, SQL with `{id}`).
    const EDITS: &[(&str, &str)] = &[
        (
            "payload",
            "UPDATE tasks SET payload = '{\"args\":[]}' WHERE id = {id}",
        ),
        (
            "priority",
            "UPDATE tasks SET priority = 'high' WHERE id = {id}",
        ),
        (
            "max_attempts",
            "UPDATE tasks SET max_attempts = 'three' WHERE id = {id}",
        ),
        (
            "attempts",
            "UPDATE tasks SET attempts = 0.5 WHERE id = {id}",
        ),
        (
            "created_at",
            "UPDATE tasks SET created_at = 'yesterday' WHERE id = {id}",
        ),
        ("name", "UPDATE tasks SET name = X'ff00' WHERE id = {id}"),
        (
            "resource_group",
            "UPDATE tasks SET resource_group = X'01' WHERE id = {id}",
        ),
        // A delayed task whose run_at is not a number never comes due.
        ("run_at", "UPDATE tasks SET run_at = 'soon' WHERE id = {id}"),
        // A large payload lives apart (schema 4).
        (
            "task_payloads.payload",
            "UPDATE task_payloads SET payload = 'text' WHERE task_id = {id}",
        ),
    ];

    /// One bad row of each kind among good tasks: every claim takes the good ones (the
    /// first at once, though a TEXT priority sorts ahead of every number), each bad row
    /// ends dead with an error naming its column, a history row and a "dead" event, and
    /// none is ever claimed.
    #[test]
    fn a_claim_sets_aside_rows_it_cannot_read_and_takes_the_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("q.db"), Options::default()).unwrap();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for (column, sql) in EDITS {
            good.push(one(&store));
            let id = if *column == "task_payloads.payload" {
                let mut big = task("big", 0);
                big.payload = vec![b'x'; 1_000].into();
                store.enqueue("q", &[big]).unwrap()[0].id
            } else {
                one(&store)
            };
            edit(&store, &sql.replace("{id}", &id.to_string()));
            bad.push((id, *column));
        }
        good.push(one(&store));
        let mut claimed = Vec::new();
        let first = store.claim("q", "w", 1, 30_000).unwrap();
        assert_eq!(first.len(), 1, "the first claim took a good task");
        claimed.extend(first.iter().map(|t| t.id));
        loop {
            let got = store.claim("q", "w", 3, 30_000).unwrap();
            if got.is_empty() {
                break;
            }
            claimed.extend(got.iter().map(|t| t.id));
        }
        claimed.sort_unstable();
        assert_eq!(claimed, good, "every good task once, no bad one");
        for (id, column) in &bad {
            let status: String = store
                .write(|tx, _| {
                    Ok(tx.query_row("SELECT status FROM tasks WHERE id = ?1", [id], |r| r.get(0))?)
                })
                .unwrap();
            assert_eq!(status, "dead", "{column}");
            let error: String = store
                .write(|tx, _| {
                    Ok(tx.query_row(
                        "SELECT last_error FROM tasks WHERE id = ?1 AND lease_owner IS NULL",
                        [id],
                        |r| r.get(0),
                    )?)
                })
                .unwrap();
            assert!(
                error.starts_with(r#"{"type":"CorruptTask","message":"column "#)
                    && error.contains(&format!("column {column} holds")),
                "{column}: {error}"
            );
            let history = store.history("q", *id).unwrap();
            assert_eq!(history.last().unwrap().to, TaskStatus::Dead, "{column}");
            let events = read_one(
                &store,
                &format!("SELECT count(*) FROM events WHERE task_id = {id} AND kind = 'dead'"),
            );
            assert_eq!(events, 1, "{column}");
        }
    }

    /// `get` names the column and gives the raw bytes; a listing shows the row and goes on.
    #[test]
    fn reads_show_a_row_they_cannot_decode_with_its_raw_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("q.db"), Options::default()).unwrap();
        let (before, id, after) = (one(&store), one(&store), one(&store));
        edit(
            &store,
            &format!("UPDATE tasks SET payload = 'hello' WHERE id = {id}"),
        );
        match store.get("q", id) {
            Err(Error::CorruptTask {
                id: got,
                column,
                problem,
                raw,
            }) => {
                assert_eq!(
                    (got, column, raw.as_slice()),
                    (id, "payload", &b"hello"[..])
                );
                assert_eq!(problem, "column payload holds TEXT, expected BLOB");
            }
            other => panic!("{other:?}"),
        }
        let page = Page {
            after: None,
            newest_first: false,
            limit: 10,
            until: None,
        };
        let listed = store.list("q", &TaskFilter::default(), page).unwrap();
        let ids: Vec<TaskId> = listed.iter().map(|t| t.id).collect();
        assert_eq!(ids, [before, id, after]);
        assert!(listed[0].corrupt.is_none() && listed[2].corrupt.is_none());
        assert_eq!(listed[1].corrupt.as_ref().unwrap().raw, b"hello");
    }
}
