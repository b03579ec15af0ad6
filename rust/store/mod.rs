//! The storage engine interface. SQLite implements it today; PostgreSQL will implement
//! the same trait, and one shared test suite (`store::conformance`) runs against both.

pub mod group_commit;
pub mod host;
pub mod import;
pub mod lease_watch;
pub mod model;
pub mod operations;
pub mod postgres;
pub mod sqlite;

#[cfg(test)]
pub(crate) mod testing;

use crate::clock::Millis;
use crate::error::Result;
use crate::policy::breaker::{BreakerConfig, CircuitState};
use crate::policy::retention::Retention;
use crate::resource_group::{Event, GroupConfig, GroupInfo};
use crate::task::{
    ClaimedTask, Enqueued, FailAction, LeaseToken, NewTask, Outcome, TaskId, TaskRecord,
    TaskStatus, Transition,
};

pub use host::{ChangeToken, Engine, Host};
pub use model::{
    CircuitCommand, Deferral, NoProcessor, TaskEvents, TurnEvent, Unrunnable, WorkerInfo,
};
pub use operations::Operations;

use std::collections::HashMap;

use crate::metrics::{Series, SeriesMap};

/// A group's breaker, as `Store::circuit_view` reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitView {
    /// As the next claim will see it.
    pub state: CircuitState,
    /// While open: milliseconds until it turns half-open (`None`: open until closed by hand,
    /// or not open).
    pub open_for_ms: Option<Millis>,
    /// The group's breaker settings in the file (`None`: the group has no breaker).
    pub config: Option<BreakerConfig>,
}

impl CircuitView {
    pub fn new(
        state: CircuitState,
        open_until: Option<Millis>,
        config: Option<BreakerConfig>,
        now: Millis,
    ) -> Self {
        let open_for_ms = match state {
            CircuitState::Open => open_until.map(|t| (t - now).max(0)),
            _ => None,
        };
        Self {
            state,
            open_for_ms,
            config,
        }
    }
}

/// A lease to renew: the task and the token of the claim that holds it.
pub type Lease = (TaskId, LeaseToken);

/// Everything the scheduler and the API need from storage. All methods are atomic:
/// each either commits completely or changes nothing. `queue` scopes every call.
pub trait Store: Send + Sync {
    /// Inserts tasks in one transaction; durable when this returns.
    fn enqueue(&self, queue: &str, tasks: &[NewTask]) -> Result<Vec<Enqueued>>;

    /// Atomically moves up to `limit` ready tasks (highest priority, then oldest) to
    /// running under a fresh lease owned by `worker`, counting an attempt on each.
    fn claim(
        &self,
        queue: &str,
        worker: &str,
        limit: usize,
        lease_ms: Millis,
    ) -> Result<Vec<ClaimedTask>>;

    /// Records a successful run. `LeaseLost` if the lease is no longer this claim's.
    fn complete(&self, id: TaskId, token: LeaseToken, result: &[u8]) -> Result<()>;

    /// Records a failed run; returns the resulting status (pending for a retry, or dead).
    fn fail(
        &self,
        id: TaskId,
        token: LeaseToken,
        error: &str,
        action: FailAction,
    ) -> Result<TaskStatus>;

    /// Records many outcomes in one transaction, each fenced by its own lease token.
    /// Per outcome: the new status, or `LeaseLost`. Any other error rolls back the batch.
    fn finish_many(&self, outcomes: &[Outcome]) -> Result<Vec<Result<TaskStatus>>>;

    /// Extends leases still held; returns, per lease, whether it was still held.
    fn heartbeat(&self, leases: &[Lease], lease_ms: Millis) -> Result<Vec<bool>>;

    /// Stores a running task's progress (0.0..=1.0) and an optional message; fenced like
    /// `complete`. Recorded as a "progress" event.
    fn progress(
        &self,
        id: TaskId,
        token: LeaseToken,
        progress: f64,
        message: Option<&str>,
    ) -> Result<()>;

    /// Gives a running task back without using up its attempt (graceful shutdown).
    fn release(&self, id: TaskId, token: LeaseToken) -> Result<()>;

    /// Takes over leases whose holder stopped renewing them (see `lease_watch`): a run that
    /// started counts as an attempt (pending again, or dead when out of attempts); a task
    /// its worker never started (see `run_journal`) goes back to pending with its attempt
    /// returned. Each call is one pass of this process's rescuer.
    fn rescue_expired(&self, queue: &str) -> Result<Vec<(TaskId, TaskStatus)>>;

    /// One task with its result.
    fn get(&self, queue: &str, id: TaskId) -> Result<TaskRecord>;

    /// pending -> cancelled.
    fn cancel(&self, queue: &str, id: TaskId) -> Result<()>;

    /// dead (or cancelled) -> pending, with a fresh set of attempts.
    fn requeue(&self, queue: &str, id: TaskId) -> Result<()>;

    /// Every transition of a task, oldest first.
    fn history(&self, queue: &str, id: TaskId) -> Result<Vec<Transition>>;

    /// Number of tasks in each status (every status present, zero included).
    fn counts(&self, queue: &str) -> Result<Vec<(TaskStatus, u64)>>;

    /// Deletes finished tasks beyond the retention; returns how many were deleted.
    fn prune(&self, queue: &str, retention: &Retention) -> Result<u64>;

    /// Earliest `run_at` among pending tasks that were delayed (enqueued with a delay, or
    /// waiting out a retry's backoff): how long an idle worker may sleep. A task due at
    /// once may be left out: the claim finds those. `None` while the queue is paused: no
    /// task can start before it is resumed (which wakes workers), and a delayed task due
    /// already must not keep them waking every millisecond.
    fn next_run_at(&self, queue: &str) -> Result<Option<Millis>>;

    /// Stores a resource group's breaker and throttle settings (shared by every process).
    fn configure_group(&self, queue: &str, group: &str, config: &GroupConfig) -> Result<()>;

    /// Pauses (or resumes) a group: its tasks stay pending. Returns whether it changed.
    fn set_group_paused(&self, queue: &str, group: &str, paused: bool) -> Result<bool>;

    /// Forgets a group's stored settings, pause and breaker state; refused (`Refused`)
    /// while it has unfinished tasks unless `force`. Returns whether it had any.
    fn forget_group(&self, queue: &str, group: &str, force: bool) -> Result<bool>;

    /// Pauses (or resumes) a whole queue. Returns whether it changed.
    fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<bool>;

    /// Whether the queue is paused.
    fn queue_paused(&self, queue: &str) -> Result<bool>;

    /// Opens, closes or resets a group's breaker by hand; returns its state after.
    fn circuit(
        &self,
        queue: &str,
        group: &str,
        command: &CircuitCommand,
        reason: &str,
    ) -> Result<CircuitState>;

    /// A group as it stands now.
    fn group_info(&self, queue: &str, group: &str) -> Result<GroupInfo>;

    /// A group's circuit as the next claim will see it: `group_info`'s `circuit` without
    /// counting the group's tasks (a worker asks after every batch with failures).
    fn circuit_state(&self, queue: &str, group: &str) -> Result<CircuitState> {
        Ok(self.circuit_view(queue, group)?.state)
    }

    /// A group's breaker as a worker's in-process view of it needs it after a flush with
    /// failures: the state the next claim will see, how long it stays open, its settings.
    fn circuit_view(&self, queue: &str, group: &str) -> Result<CircuitView>;

    /// Groups with settings or with unfinished tasks.
    fn group_names(&self, queue: &str) -> Result<Vec<String>>;

    /// Group and queue events after id `after`, oldest first.
    fn events(
        &self,
        queue: &str,
        group: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Event>>;

    /// The newest `limit` events of `queue` with id at most `up_to` and, unless `kinds` is
    /// empty, one of those kinds; oldest first (the start of a tail: `ferroq events`).
    fn latest_events(
        &self,
        queue: &str,
        kinds: &[String],
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<Event>>;

    /// The earliest future time a group held by time (rate, open breaker, Retry-After)
    /// may start a task again: when an idle worker should look again.
    fn next_unblock_at(&self, queue: &str) -> Result<Option<Millis>>;

    /// Priority aging: raises by `step` (up to `max`) the priority of each pending task
    /// that has waited `every_ms` since it was enqueued or last raised. Returns how many.
    fn age_priorities(&self, queue: &str, every_ms: Millis, step: i64, max: i64) -> Result<u64>;

    /// The id of the newest event (0 if none): where a tail of new events starts.
    fn last_event_id(&self) -> Result<i64>;

    /// Adds what this process recorded since its last flush into the `metrics` table.
    fn flush_metrics(&self) -> Result<()>;

    /// Counters and histograms per resource group of `queue` since `since` (all processes,
    /// as flushed), from raw intervals if within `raw_keep_ms`, else from hours.
    fn metrics(
        &self,
        queue: &str,
        since: Millis,
        raw_keep_ms: Millis,
    ) -> Result<HashMap<String, Series>>;

    /// What this process recorded since it started (for a scrape of this process).
    fn metrics_totals(&self) -> SeriesMap;

    /// One stored counter (`name`, e.g. "enqueued") per interval of `bucket_ms` (10 s or an
    /// hour, as flushed) from `since` on: (interval start, value), oldest first, intervals
    /// with nothing left out; summed over groups unless `group` names one. What forecasts
    /// and alerts read.
    fn metric_series(
        &self,
        queue: &str,
        group: Option<&str>,
        name: &str,
        bucket_ms: Millis,
        since: Millis,
    ) -> Result<Vec<(Millis, f64)>>;

    /// One duration histogram (`name`: "wait" or "run") per interval of `bucket_ms` from
    /// `since` on, oldest first, merged over groups unless `group` names one.
    fn metric_histograms(
        &self,
        queue: &str,
        group: Option<&str>,
        name: &str,
        bucket_ms: Millis,
        since: Millis,
    ) -> Result<Vec<(Millis, crate::metrics::Histogram)>>;

    /// Records events of a queue (a worker's concurrency change); `detail` is a JSON object.
    fn record_events(&self, queue: &str, happened: &[TurnEvent]) -> Result<()>;

    /// Takes the turn of a duty the processes of `queue` share (alert evaluation) if its
    /// last turn was taken `every_ms` ago or never: the turn's fence and the state the
    /// last turn saved (`"{}"` at first). `None`: another process's turn is recent.
    fn take_turn(&self, queue: &str, duty: &str, every_ms: Millis)
    -> Result<Option<(i64, String)>>;

    /// Ends turn `fence`: saves its state and records its events in one transaction,
    /// unless a later turn was taken meanwhile (then nothing is saved: `false`).
    fn end_turn(
        &self,
        queue: &str,
        duty: &str,
        fence: i64,
        state: &str,
        happened: &[TurnEvent],
    ) -> Result<bool>;

    /// Adds `values` (in the unit the name says) to this process's histogram `name` of
    /// `queue` and `group`, stored by the next `flush_metrics` (the profiler's figures).
    fn record_samples(&self, queue: &str, group: &str, name: &str, values: &[u64]);

    /// The stored histograms of `queue` whose name starts with `prefix` (each task's run
    /// times under `task_run:`, the profiler's under `profile:`), summed per (group, name)
    /// since `since` as `metrics` reads them; sorted by group, then name.
    fn named_metrics(
        &self,
        queue: &str,
        prefix: &str,
        since: Millis,
        raw_keep_ms: Millis,
    ) -> Result<Vec<(String, String, crate::metrics::Histogram)>>;

    /// Deletes events, metrics and worker registrations past their retention, and ends
    /// result-cache entries past their ttl (the runs stay); returns how many rows went or
    /// changed.
    fn prune_observability(&self, keep: &ObservabilityRetention) -> Result<u64>;

    /// Registers or renews a worker.
    fn worker_seen(&self, worker: &WorkerInfo) -> Result<()>;

    /// Marks a worker stopped.
    fn worker_stopped(&self, id: &str) -> Result<()>;

    /// Registered workers of a queue.
    fn workers(&self, queue: &str) -> Result<Vec<WorkerInfo>>;

    /// When the longest-waiting due task became due.
    fn oldest_due(&self, queue: &str) -> Result<Option<Millis>>;

    /// Tasks that went dead since `since`.
    fn dead_since(&self, queue: &str, since: Millis) -> Result<u64>;

    /// Gives back running tasks their worker has no processor for (a rolling deploy: see
    /// `sqlite::defer`): pending again with the claim's attempt returned and a history row
    /// saying why, claimable after a delay that doubles with each deferral in a row (1 s up
    /// to 5 min); dead with the task's `error` once `grace_ms` has passed since the first.
    /// Each fenced by its lease token, all in one transaction; per task what happened, or
    /// `LeaseLost`.
    fn defer(&self, tasks: &[Unrunnable<'_>], grace_ms: Millis) -> Result<Vec<Result<Deferral>>>;

    /// Task names that workers alive since `alive_since` had no processor for, with the
    /// pending tasks of each.
    fn no_processor(&self, queue: &str, alive_since: Millis) -> Result<Vec<NoProcessor>>;
}

/// How long observability rows are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObservabilityRetention {
    pub events_ms: Millis,
    pub raw_metrics_ms: Millis,
    pub hourly_metrics_ms: Millis,
    pub workers_ms: Millis,
}

impl Default for ObservabilityRetention {
    fn default() -> Self {
        const DAY: Millis = 86_400_000;
        Self {
            events_ms: 7 * DAY,
            raw_metrics_ms: DAY,
            hourly_metrics_ms: 30 * DAY,
            workers_ms: DAY,
        }
    }
}

/// Opens the engine `location` names: a PostgreSQL database for a `postgres://` or
/// `postgresql://` URL, else a SQLite file.
pub fn open(
    location: &std::path::Path,
    options: sqlite::Options,
) -> Result<std::sync::Arc<dyn Engine>> {
    open_with_clock(
        location,
        options,
        std::sync::Arc::new(crate::clock::SystemClock),
    )
}

/// `open` on an injected clock (tests and replayed benchmarks: `ferroq.testing.ManualClock`).
pub fn open_with_clock(
    location: &std::path::Path,
    options: sqlite::Options,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
) -> Result<std::sync::Arc<dyn Engine>> {
    let text = location.to_string_lossy();
    if postgres::is_postgres(&text) {
        // The injected clock too: a queue opened on a ManualClock keeps to it on either engine.
        return Ok(std::sync::Arc::new(postgres::PgStore::open_with_clock(
            &text, options, clock,
        )?));
    }
    Ok(std::sync::Arc::new(sqlite::SqliteStore::open_with_clock(
        location, options, clock,
    )?))
}
