//! What a process needs of its engine beyond storing tasks: its clock, wake-ups when
//! anything commits, fork safety, integrity checks, the run journal. Each engine does these
//! its own way (SQLite: a file watch, per-process connections closed around a fork, `PRAGMA
//! quick_check`); the Python facade sees only this trait and never knows which engine it has.

use std::sync::Arc;
use std::time::Duration;

use super::{Operations, Store};
use crate::clock::Millis;
use crate::error::Result;
use crate::run_journal::RunJournal;

/// Where the store stood at some instant: `wait_for_change` returns once anything commits
/// after it. Opaque to callers.
pub type ChangeToken = (u64, i64);

pub trait Host: Send + Sync {
    /// Where the store lives (a file path, a URL without its password).
    fn location(&self) -> String;

    /// The largest accepted payload or result, in bytes.
    fn max_payload(&self) -> usize;

    /// The current time by this store's clock (a `SteadyClock`).
    fn now_ms(&self) -> Millis;

    /// How far this store's clock runs ahead of the wall clock after a backward step.
    fn clock_lead_ms(&self) -> Millis;

    /// Where the store stands now, for `wait_for_change`.
    fn change_token(&self) -> Result<ChangeToken>;

    /// `change_token`, if it can be had without waiting; `None` otherwise.
    fn try_change_token(&self) -> Option<Result<ChangeToken>>;

    /// Waits until anything commits after `token` (in any process), or `timeout` passes.
    fn wait_for_change(&self, token: ChangeToken, timeout: Duration) -> Result<bool>;

    /// Wakes every `wait_for_change` in this process.
    fn notify(&self);

    /// Closes this process's connections; the next call reopens them.
    fn close(&self);

    /// Just before `fork()`: quiesces this process's connections until `after_fork_in_parent`.
    fn before_fork(&self);

    /// Right after `fork()`, in the parent.
    fn after_fork_in_parent(&self);

    /// The engine's settings as it reads them back (SQLite: pragmas).
    fn settings(&self) -> Result<Vec<(String, String)>>;

    /// Schema versions applied.
    fn schema_versions(&self) -> Result<Vec<i64>>;

    /// An integrity check of the stored data: `["ok"]` when intact.
    fn integrity_check(&self) -> Result<Vec<String>>;

    /// Opens the run journal of `worker` (see `run_journal`).
    fn run_journal(&self, worker: &str, capacity: usize) -> Result<RunJournal>;

    /// Closes the store on a thread of its own, once this is its last reference (a store
    /// dropped by Python's garbage collector in the middle of other work).
    fn close_in_background(self: Arc<Self>);
}

/// A complete engine: what the scheduler, operators and a process need of it.
pub trait Engine: Store + Operations + Host {}

impl<T: Store + Operations + Host + ?Sized> Engine for T {}
