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
];

/// The newest schema version this build knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0)
}

/// Applies every migration the file lacks; returns the versions applied by this call.
pub fn migrate(conn: &mut Connection, now: Millis) -> Result<Vec<i64>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
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
        assert_eq!(migrate(&mut conn, 1).unwrap(), vec![1, 2]);
        assert_eq!(migrate(&mut conn, 2).unwrap(), Vec::<i64>::new());
        assert_eq!(applied_versions(&conn).unwrap(), vec![1, 2]);
        for table in [
            "tasks",
            "task_results",
            "task_history",
            "metrics",
            "circuit_breaker_state",
            "resource_groups",
            "queues",
            "events",
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
