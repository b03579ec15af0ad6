//! PostgreSQL failures as the core's typed errors, with the server's own message.

use postgres::error::SqlState;

use crate::error::Error;

impl From<postgres::Error> for Error {
    fn from(err: postgres::Error) -> Self {
        let Some(db) = err.as_db_error() else {
            // No server answer: the connection failed or was lost.
            return Error::Storage(format!("PostgreSQL connection: {err}"));
        };
        let message = match db.detail() {
            Some(detail) => format!("PostgreSQL: {} ({detail})", db.message()),
            None => format!("PostgreSQL: {}", db.message()),
        };
        match *db.code() {
            SqlState::DISK_FULL | SqlState::OUT_OF_MEMORY => Error::DiskFull(message),
            SqlState::DATA_CORRUPTED | SqlState::INDEX_CORRUPTED => Error::Corrupt {
                path: String::new(),
                reason: message,
            },
            _ => Error::Storage(message),
        }
    }
}

/// Whether the transaction that failed with `err` may simply run again: a deadlock or a
/// serialization failure rolled it back whole.
pub fn is_transient(err: &postgres::Error) -> bool {
    matches!(
        err.code(),
        Some(&SqlState::T_R_DEADLOCK_DETECTED) | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
    )
}
