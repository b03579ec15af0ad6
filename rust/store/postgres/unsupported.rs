//! What this engine does not do yet says so, as a typed error (never a panic, never a
//! silent wrong answer).

use crate::error::Error;

pub fn not_yet(what: &str) -> Error {
    Error::InvalidArgument(format!("{what}: not yet supported on PostgreSQL"))
}
