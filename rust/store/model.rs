//! Engine-neutral values the `Store` trait takes and returns, beside it so no engine's
//! module is named by the trait.

use crate::clock::Millis;

/// What an operator can do to a breaker.
#[derive(Debug, Clone, PartialEq)]
pub enum CircuitCommand {
    Open { duration_ms: Option<Millis> },
    Close,
    Reset,
}

/// A worker process as registered in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    pub id: String,
    pub queue: String,
    pub hostname: String,
    pub pid: i64,
    pub concurrency: i64,
    pub pool: String,
    pub started_at: Millis,
    pub last_seen: Millis,
    pub stopped_at: Option<Millis>,
}

/// Which task events a store writes to the events table: failures always (they are rare
/// and what operators tail), every transition only when asked (a row per transition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskEvents {
    #[default]
    Failures,
    All,
}
