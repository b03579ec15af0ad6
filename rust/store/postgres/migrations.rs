//! The schema, applied under a transaction-scoped advisory lock: several hosts starting at
//! once queue up on the lock, and each migration is applied once, by the first.

use postgres::Client;

use crate::error::{Error, Result};

/// Every migration, in order: (version, SQL).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_duties.sql")),
    (3, include_str!("migrations/0003_result_cache.sql")),
    (4, include_str!("migrations/0004_event_written.sql")),
];

/// The newest schema this version knows.
pub const LATEST: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The advisory lock's first key ("fq" in ASCII); the second is the schema's hash.
const LOCK_CLASS: i32 = 0x6671;

/// Creates the schema if missing and applies the migrations it lacks, in one transaction.
pub fn migrate(client: &mut Client, schema: &str, now: i64) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LOCK_CLASS, &schema],
    )?;
    // `schema` is a checked identifier (see url::validate_schema).
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.ferroq_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at BIGINT NOT NULL
         );"
    ))?;
    let applied = versions(&mut tx, schema)?;
    let found = applied.iter().copied().max().unwrap_or(0);
    if found > LATEST {
        return Err(Error::SchemaTooNew {
            found,
            supported: LATEST,
        });
    }
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(&format!("SET LOCAL search_path = {schema};\n{sql}"))?;
        tx.execute(
            &format!(
                "INSERT INTO {schema}.ferroq_migrations (version, applied_at) VALUES ($1, $2)"
            ),
            &[version, &now],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Versions applied, oldest first.
pub fn versions(client: &mut impl postgres::GenericClient, schema: &str) -> Result<Vec<i64>> {
    Ok(client
        .query(
            &format!("SELECT version FROM {schema}.ferroq_migrations ORDER BY version"),
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
