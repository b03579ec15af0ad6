//! Task data as the core sees it: statuses, new tasks, stored records, claims.

use std::borrow::Cow;
use std::fmt;

use crate::clock::Millis;
use crate::error::Error;

/// Task ids: never reused (AUTOINCREMENT), so they also give FIFO order.
pub type TaskId = i64;

/// The fencing token of one claim; every later change of the running task must present it.
pub type LeaseToken = i64;

/// Where a task is in its lifecycle. `as_str` is the spelling in SQL and in Python.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Dead,
    Cancelled,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 5] = [
        Self::Pending,
        Self::Running,
        Self::Completed,
        Self::Dead,
        Self::Cancelled,
    ];

    /// The lowercase name stored in the database and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored status name.
    pub fn parse(name: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown task status {name:?}")))
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task to insert. Its text and payload may be borrowed, so a batch from Python goes in
/// without a copy of each.
#[derive(Debug, Clone)]
pub struct NewTask<'a> {
    pub name: Cow<'a, str>,
    pub resource_group: Cow<'a, str>,
    pub payload: Cow<'a, [u8]>,
    pub priority: i64,
    /// When it may first run; `None` means now.
    pub run_at: Option<Millis>,
    pub max_attempts: i64,
    /// At most one pending or running task holds a given key.
    pub unique_key: Option<Cow<'a, str>>,
    /// Result cache (needs a `unique_key`): once completed, the task answers enqueues with
    /// its key for this long, and nothing runs again.
    pub cache_ttl: Option<Millis>,
}

impl NewTask<'_> {
    /// The same task borrowing this one's data (nothing copied).
    pub fn borrowed(&self) -> NewTask<'_> {
        NewTask {
            name: Cow::Borrowed(&self.name),
            resource_group: Cow::Borrowed(&self.resource_group),
            payload: Cow::Borrowed(&self.payload),
            priority: self.priority,
            run_at: self.run_at,
            max_attempts: self.max_attempts,
            unique_key: self.unique_key.as_deref().map(Cow::Borrowed),
            cache_ttl: self.cache_ttl,
        }
    }

    /// The same task owning its data (to hand to another thread).
    pub fn to_owned(&self) -> NewTask<'static> {
        NewTask {
            name: Cow::Owned(self.name.to_string()),
            resource_group: Cow::Owned(self.resource_group.to_string()),
            payload: Cow::Owned(self.payload.to_vec()),
            priority: self.priority,
            run_at: self.run_at,
            max_attempts: self.max_attempts,
            unique_key: self.unique_key.as_ref().map(|k| Cow::Owned(k.to_string())),
            cache_ttl: self.cache_ttl,
        }
    }
}

/// What enqueueing one task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: TaskId,
    /// False when an unfinished task with the same unique key already existed: `id` is that task's.
    pub created: bool,
    /// A cache hit: `id` is a completed task whose cached result answers this enqueue.
    pub cached: bool,
}

impl Enqueued {
    pub fn new(id: TaskId) -> Self {
        Self {
            id,
            created: true,
            cached: false,
        }
    }
}

/// A task handed to a worker by a claim.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub id: TaskId,
    pub token: LeaseToken,
    pub name: String,
    pub resource_group: String,
    pub payload: Vec<u8>,
    pub priority: i64,
    /// This run's number, starting at 1.
    pub attempt: i64,
    pub max_attempts: i64,
    pub created_at: Millis,
    /// When it was due (its delay or backoff ended).
    pub run_at: Millis,
    pub lease_expires_at: Millis,
}

/// A stored task, as `get` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: TaskId,
    pub queue: String,
    pub name: String,
    pub status: TaskStatus,
    pub priority: i64,
    pub resource_group: String,
    pub payload: Vec<u8>,
    pub attempts: i64,
    pub max_attempts: i64,
    pub run_at: Millis,
    pub unique_key: Option<String>,
    pub progress: Option<f64>,
    /// What the processor said with its last `progress(f, message)`.
    pub progress_message: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub last_error: Option<String>,
    pub result: Option<Vec<u8>>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// The first column that does not hold what the schema says (a row edited by hand),
    /// its field left at a default; `None` for a sound row.
    pub corrupt: Option<CorruptColumn>,
}

/// A stored value of the wrong type: which column, what is wrong, and its raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct CorruptColumn {
    pub column: &'static str,
    /// e.g. "column payload holds TEXT, expected BLOB".
    pub problem: String,
    pub raw: Vec<u8>,
}

/// One status change of a task, as recorded in its history.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// `None` for the enqueue itself.
    pub from: Option<TaskStatus>,
    pub to: TaskStatus,
    pub at: Millis,
    pub worker: Option<String>,
    pub error: Option<String>,
}

/// How one run ended, as a worker reports it for a batched flush.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The processor returned this (encoded) result.
    Completed {
        id: TaskId,
        token: LeaseToken,
        result: Vec<u8>,
        /// How long the processor ran, as the worker measured it (for metrics).
        run_us: Option<u64>,
    },
    /// The processor failed with this (encoded) error.
    Failed {
        id: TaskId,
        token: LeaseToken,
        error: String,
        action: FailAction,
        impact: FailureImpact,
        run_us: Option<u64>,
    },
}

/// What a failure means for the task's resource group (the retry policy and breaker
/// classify the exception in Python).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureImpact {
    /// Counts toward the group's circuit breaker.
    pub counts: bool,
    /// A Retry-After from the resource: no task of the group starts for this long.
    pub hold_ms: Option<Millis>,
}

impl Default for FailureImpact {
    fn default() -> Self {
        Self {
            counts: true,
            hold_ms: None,
        }
    }
}

/// What to do with a task whose run failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailAction {
    /// Run again after this delay, if attempts remain; otherwise dead.
    Retry { delay_ms: Millis },
    /// Dead now, whatever attempts remain.
    Dead,
}

/// What an engine reports about one run that ended (completed, failed, rescued, deferred):
/// its group's breaker and throttle (`resource_group::GroupState::account`), the task's
/// events and, after the commit, the metrics (`metrics::Recorder::record_runs`) are fed
/// from it.
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub task_id: TaskId,
    /// The task's status after the run: completed, pending (a retry) or dead.
    pub status: TaskStatus,
    pub queue: String,
    pub group: String,
    /// The task's name (per-task run times).
    pub name: String,
    pub started_at: Option<Millis>,
    pub kind: RunEndKind,
    /// How long the processor ran, as the worker measured it.
    pub run_us: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunEndKind {
    Succeeded,
    /// `counts`: toward the breaker (policy decides); `hold_ms`: a Retry-After for the group.
    Failed {
        counts: bool,
        hold_ms: Option<Millis>,
    },
}
