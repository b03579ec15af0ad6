//! The one error type of the core. `py/errors.rs` maps each variant to a Python exception.

use crate::task::{TaskId, TaskStatus};

/// Everything the core can refuse or fail at.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// An argument is out of range or malformed (names, priorities, attempts, delays).
    #[error("{0}")]
    InvalidArgument(String),

    /// A payload or result is larger than the queue's configured limit.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },

    /// No task with this id exists in this queue.
    #[error("no task with id {0}")]
    UnknownTask(TaskId),

    /// The task changed hands: its lease expired and was rescued or re-claimed, so this
    /// worker may no longer change it.
    #[error("lease lost on task {0}: it expired or the task was taken over")]
    LeaseLost(TaskId),

    /// The requested change does not apply to a task in its current status.
    #[error("cannot {action} task {id}: it is {status}")]
    InvalidTransition {
        id: TaskId,
        action: &'static str,
        status: TaskStatus,
    },

    /// The change is refused by what other tasks hold (a unique key an unfinished task
    /// holds): like `InvalidTransition`, a refused action, not a bad argument.
    #[error("{0}")]
    Refused(String),

    /// The database file cannot be created or opened where it was asked for.
    #[error("cannot open database {path}: {reason}")]
    Path { path: String, reason: String },

    /// The file exists but is not a SQLite database, or is damaged; it was left untouched.
    #[error("database {path} is corrupt or not a SQLite database: {reason}")]
    Corrupt { path: String, reason: String },

    /// A task's row holds a value of the wrong type in `column` (edited by hand, outside
    /// ferroq): it cannot be read as a task. `raw` is the value's bytes.
    #[error("task {id} cannot be read: {problem}")]
    CorruptTask {
        id: TaskId,
        column: &'static str,
        problem: String,
        raw: Vec<u8>,
    },

    /// The file is a SQLite database of something else: it has tables but no ferroq schema.
    /// It was left untouched (ferroq never adds its tables to another application's file).
    #[error(
        "database {path} is not a ferroq database: it holds other tables ({tables}) and no \
         ferroq schema; it was left untouched (give the path of a ferroq database or of a new file)"
    )]
    Foreign { path: String, tables: String },

    /// The disk (or quota) is full; the operation was rolled back.
    #[error("database or disk is full: {0}")]
    DiskFull(String),

    /// The file was written by a newer ferroq whose schema this version does not know.
    #[error("database schema version {found} is newer than this ferroq supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },

    /// Any other SQLite failure (I/O error, lock held past the busy timeout, ...).
    #[error("storage error: {0}")]
    Storage(String),
}

/// Result alias used across the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match err.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => Error::DiskFull(err.to_string()),
            Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => Error::Corrupt {
                path: String::new(),
                reason: err.to_string(),
            },
            _ => Error::Storage(err.to_string()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        if err.raw_os_error() == Some(28) {
            Error::DiskFull(err.to_string())
        } else {
            Error::Storage(err.to_string())
        }
    }
}
