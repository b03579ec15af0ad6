//! Opening a database file: path checks, 0600 creation, pragmas read back.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::clock::Millis;
use crate::error::{Error, Result};

/// The 16-byte header every SQLite 3 database starts with.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How hard a commit is made to stick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// synchronous=FULL: a committed task survives power loss.
    Full,
    /// synchronous=NORMAL: a committed task survives a process crash; the last
    /// commits may be lost on power loss.
    Normal,
}

impl Durability {
    /// Parses the Python-facing name.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "full" => Ok(Self::Full),
            "normal" => Ok(Self::Normal),
            other => Err(Error::InvalidArgument(format!(
                "durability must be \"full\" or \"normal\", got {other:?}"
            ))),
        }
    }

    /// The value of `PRAGMA synchronous` this mode sets.
    pub fn synchronous(self) -> i64 {
        match self {
            Self::Full => 2,
            Self::Normal => 1,
        }
    }
}

/// Settings of a store.
#[derive(Debug, Clone)]
pub struct Options {
    pub durability: Durability,
    /// How long a writer waits for another process's write lock before failing.
    pub busy_timeout: Duration,
    /// Largest accepted payload or result, in bytes.
    pub max_payload: usize,
    /// Which task transitions are written to the events table.
    pub task_events: super::TaskEvents,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::Full,
            busy_timeout: Duration::from_secs(30),
            max_payload: crate::validate::DEFAULT_MAX_PAYLOAD,
            task_events: super::TaskEvents::Failures,
        }
    }
}

fn path_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Path {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Refuses the names SQLite does not read as a file name: `":memory:"` and `""` (private
/// databases in memory or a temporary file, gone at close, unseen by other processes) and
/// anything starting with `file:`, which SQLite reads as a URI (the bundled SQLite is built
/// with SQLITE_USE_URI, so even without SQLITE_OPEN_URI `file:x.db?mode=memory` opens in
/// memory). Checked before anything is created.
pub fn check_path(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let reason = if bytes.is_empty() {
        "an empty path is a temporary database that SQLite deletes when it is closed; \
         give the path of a file"
    } else if bytes == b":memory:" {
        "\":memory:\" is SQLite's private in-memory database, which other processes \
         (workers) cannot see and which is lost when it is closed; give the path of a file \
         (for a file of that name, ./:memory:)"
    } else if bytes.starts_with(b"file:") {
        "SQLite reads a path starting with \"file:\" as a URI (file:x.db?mode=memory \
         opens in memory); give a plain path (for a file of that name, prefix ./)"
    } else {
        return Ok(());
    };
    Err(path_error(path, reason))
}

/// Creates the file with mode 0600 if it is missing; refuses a file that is not SQLite
/// without letting SQLite touch it.
pub fn prepare_file(path: &Path) -> Result<()> {
    check_path(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(path_error(
            path,
            format!("directory {} does not exist", parent.display()),
        ));
    }
    if path.is_dir() {
        return Err(path_error(path, "it is a directory"));
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            return Err(path_error(path, format!("directory is not writable ({e})")));
        }
        Err(e) => return Err(path_error(path, e.to_string())),
    }
    let mut header = [0u8; 16];
    let mut file = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| path_error(path, format!("cannot read the file ({e})")))?;
    let mut filled = 0;
    while filled < header.len() {
        match file.read(&mut header[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(path_error(path, format!("cannot read the file ({e})"))),
        }
    }
    // An empty file is a new database (another process may have just created it).
    if filled != 0 && (filled < header.len() || &header != SQLITE_HEADER) {
        return Err(corrupt(
            path,
            "the file does not start with the SQLite header",
        ));
    }
    Ok(())
}

/// Refuses another application's SQLite file (tables, no ferroq schema) before `connect`
/// switches it to WAL, which rewrites its header: the file must be left as it was.
/// (`migrate` checks again inside its write transaction.)
pub fn refuse_foreign(path: &Path, options: &Options) -> Result<()> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(mut conn) = Connection::open_with_flags(path, flags) else {
        return Ok(()); // `connect` reports why the file cannot be opened
    };
    super::busy::set_patience(options.busy_timeout);
    if conn.busy_handler(Some(super::busy::handler)).is_err() {
        return Ok(());
    }
    match super::migrations::refuse_foreign(&conn) {
        Err(e @ Error::Foreign { .. }) => Err(e),
        // Anything else (read-only, damaged, locked) `connect` reports in its own words.
        _ => Ok(()),
    }
}

/// Opens one connection with every pragma set and checked.
pub fn connect(path: &Path, options: &Options) -> Result<Connection> {
    check_path(path)?;
    // No SQLITE_OPEN_URI: a path is a file name (check_path refuses what SQLite would
    // still read as a URI).
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
        return Err(path_error(path, "the file is read-only"));
    }
    // Our handler, not SQLite's busy timeout (see `busy`); the patience is per call.
    super::busy::set_patience(options.busy_timeout);
    conn.busy_handler(Some(super::busy::handler))
        .map_err(|e| open_error(path, e))?;
    conn.set_prepared_statement_cache_capacity(64);
    // Plans that never depend on bound values. Otherwise SQLite (3.54) bakes some bound
    // values into the plan (a `LIMIT ?`, a variable compared while planning a join) and
    // re-prepares the statement whenever they are bound anew, and rusqlite clears the
    // bindings of every cached statement: the claim was re-parsed on every call, a third of
    // its cost. Our plans are chosen by the SQL itself (`INDEXED BY`, literal statuses).
    let qpsg = DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG;
    if !conn.set_db_config(qpsg, true)? || !conn.db_config(qpsg)? {
        return Err(Error::Storage(
            "the query planner stability guarantee did not take".into(),
        ));
    }
    set_wal(&conn, path, options.busy_timeout)?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {};
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -16384; -- for reads (scans); the writer takes less, see make_writer
         PRAGMA foreign_keys = OFF;",
        options.durability.synchronous()
    ))
    .map_err(|e| open_error(path, e))?;
    let synchronous: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    if synchronous != options.durability.synchronous() {
        return Err(Error::Storage(format!(
            "PRAGMA synchronous reads back {synchronous}, expected {}",
            options.durability.synchronous()
        )));
    }
    Ok(conn)
}

/// Switches to WAL and checks it took. Switching needs a brief exclusive lock, which
/// the busy handler does not always wait for, so a busy answer is retried here.
fn set_wal(conn: &Connection, path: &Path, patience: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => {
                return Err(Error::Storage(format!(
                    "journal_mode reads back {mode:?}, not \"wal\""
                )));
            }
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5 + fastrand::u64(0..10)));
            }
            Err(e) => return Err(open_error(path, e)),
        }
    }
}

/// Gives an error met while opening the file its path and the right kind.
pub fn open_error(path: &Path, err: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    match err.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
            corrupt(path, err.to_string())
        }
        Some(ErrorCode::CannotOpen)
        | Some(ErrorCode::ReadOnly)
        | Some(ErrorCode::PermissionDenied) => {
            path_error(path, format!("{err} (is the directory writable?)"))
        }
        _ => Error::from(err),
    }
}

/// Page cache of the connection that writes, in KiB. SQLite ends every write transaction by
/// truncating its page cache past the end of the file, and on our writer that walks the
/// cache's whole hash table, which grows with the cache: `perf` of a claim/finish loop put
/// 4% of it there (`pcache1TruncateUnsafe` under `pager_end_transaction`) with the 16 MB the
/// readers keep, 0.7% with 2 MB. The writes' working set (interior pages, the tails of the
/// indexes) fits in far less. Measured with 4 MB, same minutes: claim + finish 5.5-5.6 -> 5.0-5.4 µs
/// a task at 500 a batch, claim + ack with 1,000,000 finished tasks retained 160,000 ->
/// 176,000/s.
pub const WRITER_CACHE_KIB: i64 = 4_000;

/// Makes a connection opened by `connect` the process's writer.
pub fn make_writer(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    Ok(())
}

/// The pragmas that matter for durability, concurrency and speed, as the connection
/// reports them.
/// The latest time stored in the file by any process: the newest task's creation or the
/// newest event (two seeks). A floor for the clock of a process opening the file, so a clock
/// that stepped back before it started does not make due tasks wait (`SteadyClock`).
pub fn latest_stored_time(conn: &Connection) -> Result<Option<Millis>> {
    Ok(conn
        .prepare(
            "SELECT max(coalesce((SELECT created_at FROM tasks ORDER BY id DESC LIMIT 1), 0),
                        coalesce((SELECT at FROM events ORDER BY id DESC LIMIT 1), 0))",
        )?
        .query_row([], |r| r.get::<_, Millis>(0))
        .map(|t| (t > 0).then_some(t))?)
}

pub fn read_pragmas(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for name in [
        "journal_mode",
        "synchronous",
        "temp_store",
        "foreign_keys",
        "cache_size",
    ] {
        let value: rusqlite::types::Value = conn.pragma_query_value(None, name, |r| r.get(0))?;
        let text = match value {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            other => format!("{other:?}"),
        };
        out.push((name.to_string(), text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    /// SQLite-only: every pragma ferroq sets, read back (SQLite ignores unknown names).
    #[test]
    fn pragmas_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let options = super::Options {
            durability: super::Durability::Normal,
            ..super::Options::default()
        };
        let store = super::super::SqliteStore::open(dir.path().join("q.db"), options).unwrap();
        let pragmas = store.pragmas().unwrap();
        let get = |k: &str| pragmas.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("journal_mode"), "wal");
        assert_eq!(get("synchronous"), "1");
        assert_eq!(get("temp_store"), "2");
        assert_eq!(get("cache_size"), "-4000");
    }
    use super::super::{Options, SqliteStore};
    use crate::store::Store;
    use crate::task::{FailAction, FailureImpact, Outcome};
    use rusqlite::ffi;

    /// Names SQLite reads as something other than a file are refused before anything is
    /// created; "./file:..." and "./:memory:" are plain files.
    #[test]
    fn memory_uri_and_empty_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // (":memory:" and relative names are tested from Python, in a directory of its own.)
        for path in [
            String::new(),
            format!("file:{d}/q.db?mode=memory"),
            format!("file:{d}/q.db"),
        ] {
            match SqliteStore::open(&path, Options::default()) {
                Err(crate::Error::Path { reason, .. }) => {
                    assert!(reason.contains("give"), "{path}: {reason}")
                }
                Err(other) => panic!("{path}: {other}"),
                Ok(_) => panic!("{path} opened"),
            }
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        for name in ["file:q.db", ":memory:"] {
            let path = dir.path().join(name);
            SqliteStore::open(&path, Options::default()).unwrap();
            assert!(path.is_file(), "{name}");
        }
    }

    /// Another application's database is refused with its path and left byte for byte as
    /// it was (not even switched to WAL).
    #[test]
    fn a_foreign_database_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sqlite");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY); INSERT INTO users VALUES (1);",
        )
        .unwrap();
        drop(conn);
        let before = std::fs::read(&path).unwrap();
        match SqliteStore::open(&path, Options::default()) {
            Err(crate::Error::Foreign { path: p, tables }) => {
                assert_eq!(p, path.display().to_string());
                assert_eq!(tables, "users");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    /// Every statement the hot path ran on the writer, with how often SQLite re-prepared it.
    fn reprepares(store: &SqliteStore) -> Vec<(String, i32)> {
        super::super::writer_statements(store, ffi::SQLITE_STMTSTATUS_REPREPARE, false)
    }

    /// The writer's smaller page cache holds on every writer connection (the first, and
    /// one reopened after `close`); readers keep theirs.
    #[test]
    fn the_writer_and_the_readers_keep_their_page_caches() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("q.db"), Options::default()).unwrap();
        let cache = |store: &SqliteStore, reader: bool| -> String {
            let pragmas = if reader {
                store.with_conn(|l| &l.reader, |c| super::read_pragmas(c))
            } else {
                store.pragmas()
            };
            let pragmas = pragmas.unwrap();
            pragmas
                .into_iter()
                .find(|(n, _)| n == "cache_size")
                .unwrap()
                .1
        };
        let writer = (-super::WRITER_CACHE_KIB).to_string();
        assert_eq!(cache(&store, false), writer);
        assert_eq!(cache(&store, true), "-16384");
        store.close();
        assert_eq!(cache(&store, false), writer);
        assert_eq!(cache(&store, true), "-16384");
    }

    #[test]
    fn cached_statements_are_never_prepared_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("q.db"), Options::default()).unwrap();
        let task = crate::store::testing::task("t", 0);
        store.enqueue("q", &vec![task.clone(); 500]).unwrap();
        // Varying limits and batch sizes: new values bound on every call.
        for round in 1..=8 {
            store.enqueue("q", &vec![task.clone(); round]).unwrap();
            let claimed = store.claim("q", "w", round * 3, 30_000).unwrap();
            let leases: Vec<_> = claimed.iter().map(|t| (t.id, t.token)).collect();
            store.heartbeat(&leases, 30_000).unwrap();
            let outcomes: Vec<Outcome> = claimed
                .iter()
                .enumerate()
                .map(|(i, t)| match i % 2 {
                    0 => Outcome::Completed {
                        id: t.id,
                        token: t.token,
                        result: b"null".to_vec(),
                        run_us: Some(5),
                    },
                    _ => Outcome::Failed {
                        id: t.id,
                        token: t.token,
                        error: "boom".into(),
                        action: FailAction::Retry { delay_ms: 0 },
                        impact: FailureImpact::default(),
                        run_us: Some(5),
                    },
                })
                .collect();
            store.finish_many(&outcomes).unwrap();
        }
        let stats = reprepares(&store);
        assert!(stats.len() >= 4, "{stats:?}");
        let again: Vec<_> = stats.iter().filter(|(_, n)| *n > 0).collect();
        assert!(again.is_empty(), "re-prepared: {again:?}");
    }
}
