//! What operators (the CLI, a dashboard) and dedicated workers need beyond the scheduler:
//! listings by keyset pagination, bulk requeue and purge in small transactions, and claims
//! restricted to some resource groups. A separate trait so the scheduler's `Store` stays
//! small; every engine implements both.

use crate::clock::Millis;
use crate::error::Result;
use crate::task::{ClaimedTask, Enqueued, NewTask, TaskId, TaskRecord, TaskStatus};

use super::Store;
use super::import::FinishedTask;

/// Which tasks a listing returns. Empty `statuses`: every status.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub statuses: Vec<TaskStatus>,
    pub group: Option<String>,
    pub name: Option<String>,
}

/// One page of a listing: ids strictly after `after` in the listing's order (ascending id,
/// or descending with `newest_first`). Keyset, never OFFSET: a page costs the same at the
/// millionth row as at the first.
///
/// `until` bounds the ids the page may read (inclusive, in the listing's order: at most
/// `until` ascending, at least `until` descending). A filter that matches few tasks reads
/// every row until the page is full; with `until` a caller reads a window of ids at a time
/// and stays in a bounded time per call (a dashboard over a million tasks).
#[derive(Debug, Clone, Copy, Default)]
pub struct Page {
    pub after: Option<TaskId>,
    pub newest_first: bool,
    pub limit: usize,
    pub until: Option<TaskId>,
}

/// Finished tasks of one status (completed, dead or cancelled), finished before a time.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: TaskStatus,
    pub finished_before: Option<Millis>,
    pub group: Option<String>,
    pub name: Option<String>,
}

/// Where a bulk operation stands: pass `next` back to go on; `None` when it is done.
pub type Cursor = (Millis, TaskId);

/// What one batch of a bulk operation did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// Tasks changed (deleted or requeued).
    pub done: u64,
    /// Tasks left as they were (a requeue whose unique key an unfinished task holds).
    pub skipped: Vec<TaskId>,
    pub next: Option<Cursor>,
}

/// Pending tasks (ready or delayed) of a group and/or a task name: what a bulk cancel takes.
#[derive(Debug, Clone, Default)]
pub struct PendingTasks {
    pub group: Option<String>,
    pub name: Option<String>,
}

/// Where a bulk cancel stands: the last id it passed, and the newest id it takes (the newest
/// task when it began: tasks enqueued since are left alone, so it ends under a busy producer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelCursor {
    pub after: TaskId,
    pub through: TaskId,
}

/// What one batch of a bulk cancel did: tasks cancelled, and where to go on (`None`: done).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CancelStep {
    pub done: u64,
    pub next: Option<CancelCursor>,
}

impl CancelStep {
    /// The step after a batch of `found` ids (up to `limit`), `done` of them cancelled.
    pub fn after_batch(found: &[TaskId], limit: usize, done: u64, through: TaskId) -> Self {
        let next = (found.len() >= limit).then(|| CancelCursor {
            after: *found.last().expect("a full batch"),
            through,
        });
        Self { done, next }
    }
}

/// A periodic task as a worker declares it (see `Operations::declare_schedule`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    pub name: String,
    pub task: String,
    pub cron: String,
    pub tz: String,
    pub missed: String,
    /// When this cron and time zone were first declared (ms).
    pub declared_at: Millis,
    /// The newest tick enqueued (ms), and its task.
    pub last_tick: Option<Millis>,
    pub last_task_id: Option<TaskId>,
    /// When a worker last declared it (ms).
    pub seen_at: Millis,
}

pub trait Operations: Store {
    /// Records (or renews) a schedule; keeps its `last_tick`, and its `declared_at` unless
    /// the cron or time zone changed. Returns the schedule as stored. `now` is the
    /// caller's clock (the scheduler's, injectable in tests).
    fn declare_schedule(&self, queue: &str, schedule: &Schedule, now: Millis) -> Result<Schedule>;

    /// Enqueues `task` for tick `tick` of schedule `name` unless a tick at or after it was
    /// already enqueued; raises the schedule's `last_tick` in the same transaction.
    /// `None`: the tick (or a later one) was enqueued already.
    fn enqueue_tick(
        &self,
        queue: &str,
        name: &str,
        tick: Millis,
        task: &NewTask,
    ) -> Result<Option<Enqueued>>;

    /// The schedules declared on `queue`, by name.
    fn schedules(&self, queue: &str) -> Result<Vec<Schedule>>;

    /// Tasks matching `filter`, one page, with payloads and results.
    fn list(&self, queue: &str, filter: &TaskFilter, page: Page) -> Result<Vec<TaskRecord>>;

    /// How many finished tasks match (what `purge` or a bulk requeue would touch).
    fn count_finished(&self, queue: &str, which: &Finished) -> Result<u64>;

    /// Deletes up to `limit` matching finished tasks after `after`, in one transaction.
    fn purge_batch(
        &self,
        queue: &str,
        which: &Finished,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Step>;

    /// Moves up to `limit` matching dead or cancelled tasks after `after` back to pending
    /// with fresh attempts, in one transaction.
    fn requeue_batch(
        &self,
        queue: &str,
        which: &Finished,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Step>;

    /// How many pending tasks (ready or delayed) of `queue` match.
    fn count_pending(&self, queue: &str, which: &PendingTasks) -> Result<u64>;

    /// Cancels up to `limit` matching pending tasks after `at` (from the start: `None`), in
    /// one transaction, each as `Store::cancel` would (history, event, metrics). A task
    /// claimed meanwhile is left to its run.
    fn cancel_batch(
        &self,
        queue: &str,
        which: &PendingTasks,
        at: Option<CancelCursor>,
        limit: usize,
    ) -> Result<CancelStep>;

    /// `Store::claim`, taking only tasks of `groups` (still within each group's limits).
    fn claim_in_groups(
        &self,
        queue: &str,
        groups: &[String],
        worker: &str,
        limit: usize,
        lease_ms: Millis,
    ) -> Result<Vec<ClaimedTask>>;

    /// Queues present in the file: with tasks, settings or a pause.
    fn queue_names(&self) -> Result<Vec<String>>;

    /// The task names stored in `queue` equal to `name` or ending in `.{name}` (a dot
    /// boundary), sorted: what an operator's short name may mean. Reads every task of the
    /// queue (no index on names): for operators, not hot paths.
    fn task_names_like(&self, queue: &str, name: &str) -> Result<Vec<String>>;

    /// Ends the result-cache entries of task `name` (the one with unique key `key`, or all
    /// of them): the next identical enqueue runs again. The completed runs stay. Returns
    /// how many entries were live or expired-but-kept.
    fn clear_cache(&self, queue: &str, name: &str, key: Option<&str>) -> Result<u64>;

    /// Stores finished tasks of another store in `queue`, in one transaction, under new ids
    /// given in order: status, attempts, times, payload, result, last error, progress, the
    /// worker of the last run and the history. No events, metrics or wake-ups: nothing
    /// happened here. Refuses (writing nothing) unless every task is finished and sound.
    fn import_finished(&self, queue: &str, tasks: &[FinishedTask]) -> Result<Vec<TaskId>>;

    /// Up to `limit` finished tasks of `queue` with ids in (`after`, `until`], in id order,
    /// each with its history: what `import_finished` takes.
    fn export_finished(
        &self,
        queue: &str,
        after: TaskId,
        until: TaskId,
        limit: usize,
    ) -> Result<Vec<FinishedTask>> {
        let filter = TaskFilter {
            statuses: vec![
                TaskStatus::Completed,
                TaskStatus::Dead,
                TaskStatus::Cancelled,
            ],
            ..TaskFilter::default()
        };
        let page = Page {
            after: Some(after),
            newest_first: false,
            limit,
            until: Some(until),
        };
        self.list(queue, &filter, page)?
            .into_iter()
            .map(|record| {
                let history = self.history(queue, record.id)?;
                Ok(FinishedTask { record, history })
            })
            .collect()
    }
}
