//! Numbered schema migrations, recorded in the file itself.
//!
//! Several processes may open a new file at once: each runs the check inside
//! `BEGIN IMMEDIATE`, so exactly one applies a migration and the others see it applied.

use rusqlite::{Connection, TransactionBehavior};

use crate::clock::Millis;
use crate::error::{Error, Result};

/// (version, SQL), in order. Never edit a released migration: add a new one.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_groups.sql")),
    (3, include_str!("migrations/0003_cheaper_status_checks.sql")),
    (4, include_str!("migrations/0004_large_payloads_apart.sql")),
    (5, include_str!("migrations/0005_delayed_tasks_apart.sql")),
    (6, include_str!("migrations/0006_schedules.sql")),
    (7, include_str!("migrations/0007_duties.sql")),
    (8, include_str!("migrations/0008_result_cache.sql")),
];

/// The newest schema version this build knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0)
}

/// Applies every migration the file lacks; returns the versions applied by this call.
pub fn migrate(conn: &mut Connection, now: Millis) -> Result<Vec<i64>> {
    migrate_through(conn, now, latest_version())
}

/// `migrate`, stopping at version `last` (tests build files of older versions with it).
fn migrate_through(conn: &mut Connection, now: Millis, last: i64) -> Result<Vec<i64>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    refuse_foreign(&tx)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )?;
    let current: i64 = tx.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    if current > latest_version() {
        return Err(Error::SchemaTooNew {
            found: current,
            supported: latest_version(),
        });
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS
        .iter()
        .filter(|(v, _)| *v > current && *v <= last)
    {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            (version, now),
        )?;
        applied.push(*version);
    }
    tx.commit()?;
    if !applied.is_empty() {
        log::info!("applied schema migrations {applied:?}");
    }
    Ok(applied)
}

/// Refuses a file that holds tables but no ferroq schema (another application's
/// database): migrating it would add our tables to it. An empty file (new, or created by
/// another process that has not migrated it yet) has no tables. Checked inside the
/// migration's write transaction, so a file another process is initialising is seen either
/// empty or with its `schema_migrations`.
pub fn refuse_foreign(conn: &Connection) -> Result<()> {
    let ours: bool = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")?
        .exists([])?;
    if ours {
        return Ok(());
    }
    let mut stmt = conn.prepare("SELECT name FROM sqlite_master ORDER BY name LIMIT 6")?;
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if names.is_empty() {
        return Ok(());
    }
    let mut tables = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        tables.push_str(", ...");
    }
    Err(Error::Foreign {
        path: String::new(),
        tables,
    })
}

/// The versions recorded in the file.
pub fn applied_versions(conn: &Connection) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare("SELECT version FROM schema_migrations ORDER BY version")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_once_and_records_versions() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn, 1).unwrap(), vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(migrate(&mut conn, 2).unwrap(), Vec::<i64>::new());
        assert_eq!(
            applied_versions(&conn).unwrap(),
            vec![1, 2, 3, 4, 5, 6, 7, 8]
        );
        for table in [
            "tasks",
            "task_payloads",
            "task_results",
            "task_history",
            "metrics",
            "circuit_breaker_state",
            "resource_groups",
            "queues",
            "events",
            "duties",
        ] {
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "{table}");
        }
    }

    /// Version 3 rebuilds the tasks table: every row, result, history entry and the id
    /// sequence must come through, and the new constraints must hold.
    #[test]
    fn rebuilding_the_tasks_table_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("q.db")).unwrap();
        assert_eq!(migrate_through(&mut conn, 1, 2).unwrap(), vec![1, 2]);
        conn.execute_batch(
            "INSERT INTO tasks (queue, name, resource_group, payload, priority, run_at, status,
                                max_attempts, created_at, updated_at, finished_at, unique_key,
                                progress_message)
             VALUES ('q', 'a', 'g', x'01', 0, 1, 'pending', 3, 1, 1, NULL, 'k1', NULL),
                    ('q', 'b', 'g', x'02', 5, 1, 'running', 3, 1, 1, NULL, NULL, 'half'),
                    ('q', 'c', 'g', x'03', 0, 1, 'completed', 3, 1, 2, 2, NULL, NULL),
                    ('q', 'd', 'g', x'04', 0, 1, 'dead', 3, 1, 3, 3, NULL, NULL),
                    ('q', 'e', 'g', x'05', 0, 1, 'completed', 3, 1, 4, 4, NULL, NULL);
             INSERT INTO task_results VALUES (3, x'aa', 2);
             INSERT INTO task_history (task_id, from_status, to_status, at) VALUES (4, 'running', 'dead', 3);
             DELETE FROM tasks WHERE id = 5;",
        )
        .unwrap();
        let dump = |conn: &Connection| -> Vec<String> {
            let mut stmt = conn
                .prepare("SELECT quote(id) || quote(name) || quote(payload) || quote(status) || quote(unique_key) || quote(progress_message) || quote(finished_at) FROM tasks ORDER BY id")
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
        };
        let before = dump(&conn);
        assert_eq!(migrate_through(&mut conn, 5, 3).unwrap(), vec![3]);
        assert_eq!(dump(&conn), before);
        let one = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            one("SELECT count(*) FROM task_results WHERE task_id = 3"),
            1
        );
        assert_eq!(
            one("SELECT count(*) FROM task_history WHERE task_id = 4"),
            1
        );
        assert_eq!(
            one("SELECT seq FROM sqlite_sequence WHERE name = 'tasks'"),
            5
        );
        assert_eq!(one("SELECT count(*) FROM sqlite_sequence"), 1);
        let quick: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(quick, "ok");
        // The CHECK still refuses an unknown status; the unique key still holds while pending.
        let insert = "INSERT INTO tasks (queue, name, resource_group, payload, priority, run_at,
                          status, max_attempts, created_at, updated_at, unique_key)
                      VALUES ('q', 'f', 'g', x'06', 0, 1, ?1, 3, 1, 1, ?2)";
        assert!(conn.execute(insert, ("lost", None::<&str>)).is_err());
        assert!(conn.execute(insert, ("pending", Some("k1"))).is_err());
        conn.execute(insert, ("pending", None::<&str>)).unwrap();
        assert_eq!(conn.last_insert_rowid(), 6, "ids are never reused");
        // The trigger came back: pruning a task takes its result and history along.
        conn.execute_batch("DELETE FROM tasks WHERE id IN (3, 4)")
            .unwrap();
        assert_eq!(one("SELECT count(*) FROM task_results"), 0);
        assert_eq!(one("SELECT count(*) FROM task_history"), 0);
        for index in [
            "tasks_ready",
            "tasks_leases",
            "tasks_due",
            "tasks_finished",
            "tasks_unique_key",
        ] {
            let n: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?1",
                    [index],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "{index}");
        }
    }

    /// Writing a status must not build a temporary table per row (what `IN` with three or
    /// more constants in a CHECK or partial index costs: see migration 3).
    #[test]
    fn status_writes_build_no_temporary_tables() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, 1).unwrap();
        for sql in [
            "UPDATE tasks SET status = 'running' WHERE id = 1",
            "UPDATE tasks SET status = 'completed', finished_at = 2 WHERE id = 1",
            "INSERT INTO tasks (queue, name, resource_group, payload, priority, run_at, status,
                                max_attempts, created_at, updated_at)
             VALUES ('q', 'a', 'g', x'01', 0, 1, 'pending', 3, 1, 1)",
        ] {
            let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
            let ops: Vec<String> = stmt
                .query_map([], |r| r.get(1))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            assert!(
                !ops.iter().any(|op| op == "OpenEphemeral"),
                "{sql}: {ops:?}"
            );
        }
    }

    /// Version 4 only adds `task_payloads`: payloads already in task rows stay there, and
    /// deleting such a task still works (its trigger finds no payload row).
    #[test]
    fn schema_4_leaves_existing_payloads_in_their_rows() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate_through(&mut conn, 1, 3).unwrap(), vec![1, 2, 3]);
        let big = vec![7u8; 5000];
        conn.execute(
            "INSERT INTO tasks (queue, name, resource_group, payload, priority, run_at, status,
                                max_attempts, created_at, updated_at)
             VALUES ('q', 'a', 'g', ?1, 0, 1, 'pending', 3, 1, 1)",
            [&big],
        )
        .unwrap();
        assert_eq!(migrate_through(&mut conn, 2, 4).unwrap(), vec![4]);
        let kept: Vec<u8> = conn
            .query_row("SELECT payload FROM tasks WHERE id = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, big);
        conn.execute("DELETE FROM tasks WHERE id = 1", []).unwrap();
        let left: i64 = conn
            .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    /// Version 5 files each pending task of an older file under the index it belongs to:
    /// delayed (enqueued with a delay, or a retry waiting out its backoff) or ready.
    #[test]
    fn schema_5_sorts_pending_tasks_into_ready_and_delayed() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate_through(&mut conn, 1, 4).unwrap(), vec![1, 2, 3, 4]);
        for (run_at, created_at, updated_at) in [
            (10, 10, 10), // enqueued to run at once
            (90, 10, 10), // enqueued with a delay
            (80, 10, 50), // failed at 50, retried at 80
            (60, 10, 60), // requeued (or rescued) at 60
        ] {
            conn.execute(
                "INSERT INTO tasks (queue, name, resource_group, payload, priority, run_at, status,
                                    max_attempts, created_at, updated_at)
                 VALUES ('q', 'a', 'g', x'01', 0, ?1, 'pending', 3, ?2, ?3)",
                (run_at, created_at, updated_at),
            )
            .unwrap();
        }
        assert_eq!(migrate_through(&mut conn, 100, 5).unwrap(), vec![5]);
        let ids = |sql: &str| -> Vec<i64> {
            let mut stmt = conn.prepare(sql).unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
        };
        assert_eq!(
            ids("SELECT id FROM tasks INDEXED BY tasks_ready
                 WHERE queue = 'q' AND status = 'pending' AND run_at <= updated_at ORDER BY id"),
            vec![1, 4]
        );
        assert_eq!(
            ids("SELECT id FROM tasks INDEXED BY tasks_due
                 WHERE queue = 'q' AND status = 'pending' AND run_at > updated_at ORDER BY id"),
            vec![2, 3]
        );
    }

    /// Another application's database is refused and left as it was; an empty one is ours.
    #[test]
    fn refuses_a_file_with_tables_but_no_ferroq_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY); INSERT INTO users VALUES (1);",
        )
        .unwrap();
        match migrate(&mut conn, 1) {
            Err(Error::Foreign { tables, .. }) => assert_eq!(tables, "users"),
            other => panic!("{other:?}"),
        }
        let n: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "nothing added");
        let mut empty = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut empty, 1).unwrap().len(), MIGRATIONS.len());
    }

    #[test]
    fn refuses_a_newer_schema() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, 1).unwrap();
        conn.execute("INSERT INTO schema_migrations VALUES (999, 0)", [])
            .unwrap();
        assert!(matches!(
            migrate(&mut conn, 1),
            Err(Error::SchemaTooNew { found: 999, .. })
        ));
    }
}
