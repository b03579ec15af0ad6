//! Engine-neutral values the `Store` trait takes and returns, beside it so no engine's
//! module is named by the trait.

use crate::clock::Millis;
use crate::task::{LeaseToken, TaskId, TaskStatus};

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
    /// Tasks it holds a lease on now (read from the tasks; ignored when registering).
    pub running: i64,
}

/// Which task events a store writes to the events table: failures always (they are rare
/// and what operators tail), every transition only when asked (a row per transition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskEvents {
    #[default]
    Failures,
    All,
}

/// A task to give back: its claim, and the error it goes dead with once the grace is over.
#[derive(Debug, Clone, Copy)]
pub struct Unrunnable<'a> {
    pub id: TaskId,
    pub token: LeaseToken,
    pub error: &'a str,
}

/// What a deferral did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deferral {
    /// Pending (given back) or dead (the grace was over).
    pub status: TaskStatus,
    /// Deferrals in a row, this one included (for a dead task: the ones before).
    pub deferrals: i64,
    /// When it may be claimed again (pending), or when it went dead.
    pub run_at: Millis,
}

/// A task name that live workers met without a processor for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoProcessor {
    pub task: String,
    /// The live workers that deferred it (each has no processor for it).
    pub workers: Vec<String>,
    /// Pending tasks of that name.
    pub pending: u64,
}

/// An event a duty's turn records (`Store::end_turn`), or a worker's (`Store::record_event`).
#[derive(Debug, Clone, PartialEq)]
pub struct TurnEvent {
    pub group: Option<String>,
    pub kind: String,
    /// A JSON object.
    pub detail: String,
}
