//! Tests of this engine on a real server: `FERROQ_TEST_PG_URL` names it. Without one they
//! pass saying loudly that they were skipped, unless `CI=true`: CI must not skip them.

use std::path::Path;

/// The test server's URL, or `None` (after saying so) when there is none outside CI.
pub fn server_url() -> Option<String> {
    match std::env::var("FERROQ_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("FERROQ_TEST_PG_URL is not set: CI must run the PostgreSQL suite")
        }
        _ => {
            eprintln!(
                "PostgreSQL suite SKIPPED: FERROQ_TEST_PG_URL is not set (run under tests/pg_cluster.py)"
            );
            None
        }
    }
}

/// The test server's URL with a schema of its own for `path` (a test's temp dir).
pub fn schema_url(path: &Path) -> String {
    let url = server_url().expect("checked by the caller");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.to_string_lossy().bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}schema=t_{hash:016x}")
}
