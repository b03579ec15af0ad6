//! The SQLite storage engine: one file, WAL, one writer connection and one reader
//! connection per process, statements cached, every write in `BEGIN IMMEDIATE`.

mod admin;
mod busy;
mod checkpoint;
mod claim;
mod closing;
mod convert;
mod decode;
mod defer;
mod duties;
mod enqueue;
mod events;
mod finish;
pub mod health;
mod history;
mod import;
mod listing;
mod local;
mod metrics;
pub mod migrations;
pub mod open;
mod quarantine;
mod ready;
mod resource_groups;
mod schedules;
mod wakeup;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use rusqlite::{Connection, Transaction, TransactionBehavior};

pub use open::{Durability, Options};

/// The engine-neutral conformance suite, run against this engine.
#[cfg(test)]
#[path = "../conformance/mod.rs"]
mod conformance;

/// SQLite runs every conformance test, anywhere.
#[cfg(test)]
fn conformance_available() -> bool {
    true
}

#[cfg(test)]
fn conformance_skips() -> &'static [&'static str] {
    &[]
}

/// The conformance suite's engine: a SQLite file at `path` on `clock` (`normal` durability:
/// the suite checks behaviour, not fsyncs).
#[cfg(test)]
fn conformance_engine(
    path: &Path,
    clock: Arc<crate::clock::ManualClock>,
) -> Arc<dyn crate::store::Engine> {
    let options = Options {
        durability: Durability::Normal,
        ..Options::default()
    };
    Arc::new(SqliteStore::open_with_clock(path, options, clock).unwrap())
}

pub use self::closing::{close_in_background, hold_closes, release_closes};
pub use self::finish::TaskEvents;
use self::local::{Local, PerProcess};
pub use self::wakeup::ChangeToken;
use crate::clock::{Clock, Millis, SteadyClock, SystemClock};
use crate::error::{Error, Result};
use crate::metrics::Counter;
use crate::metrics::{Series, SeriesMap};
use crate::policy::breaker::CircuitState;
use crate::policy::retention::Retention;
use crate::resource_group::{self, Event, GroupConfig, GroupInfo};
use crate::run_journal::{self, RunJournal};
use crate::store::lease_watch::LeaseWatch;
use crate::store::{CircuitCommand, WorkerInfo};
use crate::store::{CircuitView, Host, Lease, ObservabilityRetention, Store};
use crate::store::{Deferral, NoProcessor, TurnEvent, Unrunnable};
use crate::task::{
    ClaimedTask, Enqueued, FailAction, FailureImpact, LeaseToken, NewTask, Outcome, RunEnd, TaskId,
    TaskRecord, TaskStatus, Transition,
};
use crate::validate;
use std::collections::HashMap;

/// Changes whenever another connection (in any process) commits to the file.
fn read_data_version(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))?)
}

/// A task store in one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    options: Options,
    clock: Arc<SteadyClock>,
    local: PerProcess,
    /// This process's rescuer: the leases it watches, by queue.
    watches: Mutex<HashMap<String, LeaseWatch>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing, mode 0600) and migrates the file at `path`.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Self> {
        Self::open_with_clock(path, options, Arc::new(SystemClock))
    }

    /// `open` with an injected clock.
    pub fn open_with_clock(
        path: impl AsRef<Path>,
        options: Options,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        open::prepare_file(&path)?;
        open::refuse_foreign(&path, &options).map_err(|e| with_path(e, &path))?;
        let mut conn = open::connect(&path, &options)?;
        migrations::migrate(&mut conn, clock.now_ms()).map_err(|e| with_path(e, &path))?;
        open::make_writer(&conn).map_err(|e| with_path(e, &path))?;
        let clock = Arc::new(SteadyClock::new(clock));
        // Best effort: a file damaged where this reads is refused by the checks made for
        // it (a worker's quick_check), not here.
        if let Ok(Some(latest)) = open::latest_stored_time(&conn) {
            clock.raise_floor(latest);
        }
        Ok(Self {
            clock,
            watches: Mutex::new(HashMap::new()),
            local: PerProcess::new(conn, path.clone(), options.clone())
                .map_err(|e| with_path(e.into(), &path))?,
            path,
            options,
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The current time by this store's clock.
    pub fn now_ms(&self) -> Millis {
        self.clock.now_ms()
    }

    /// How far this store's clock runs ahead of the wall clock after a backward step (see
    /// `SteadyClock`).
    pub fn clock_lead_ms(&self) -> Millis {
        self.clock.lead_ms()
    }

    /// Opens the run journal of `worker` (see `run_journal`), first deleting journals of
    /// dead workers that note nothing still running.
    pub fn run_journal(&self, worker: &str, capacity: usize) -> Result<RunJournal> {
        validate::name("worker", worker)?;
        self.collect_run_journals();
        RunJournal::create(&self.path, worker, capacity)
    }

    /// Deletes the journals of dead workers whose leases were all rescued or finished.
    fn collect_run_journals(&self) {
        let holds_leases = |worker: &str| {
            self.read(|conn, _| {
                Ok(conn
                    .prepare_cached(
                        "SELECT 1 FROM tasks WHERE status = 'running' AND lease_owner = ?1",
                    )?
                    .exists([worker])?)
            })
            .unwrap_or(true) // unsure: keep the journal
        };
        run_journal::collect_garbage(&self.path, holds_leases);
    }

    /// Pragmas as the writer connection reads them back.
    pub fn pragmas(&self) -> Result<Vec<(String, String)>> {
        self.with_conn(|l| &l.writer, |conn| open::read_pragmas(conn))
    }

    /// Schema versions recorded in the file.
    pub fn schema_versions(&self) -> Result<Vec<i64>> {
        self.with_conn(|l| &l.reader, |conn| migrations::applied_versions(conn))
    }

    /// Runs SQLite's `quick_check`; returns its findings ("ok" when intact).
    pub fn quick_check(&self) -> Result<Vec<String>> {
        self.with_conn(
            |l| &l.reader,
            |conn| {
                let mut stmt = conn.prepare("PRAGMA quick_check")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            },
        )
    }

    /// Closes this process's connections; the next call reopens them. Nothing reopens the
    /// file meanwhile (a checkpoint asked for before the close is dropped), so the caller
    /// may delete it.
    pub fn close(&self) {
        // What this process counted since its last flush is kept (a producer's arrivals).
        if let Err(e) = self.flush_metrics() {
            log::debug!("metrics flush on close failed: {e}");
        }
        let local = self.local.get();
        let mut writer = local.writer.lock(); // no commit can ask for a checkpoint now
        local.checkpointer.go_dormant();
        drop(writer.take());
        drop(writer);
        drop(local.reader.lock().take());
        drop(local.checkpointer.conn.lock().take());
    }

    /// Just before `fork()`: waits for the calls in flight, closes this process's
    /// connections and keeps them locked until `after_fork_in_parent`. SQLite keeps
    /// per-process lock bookkeeping that a child would inherit without the locks: with a
    /// connection open across the fork, another process could checkpoint or reset the WAL
    /// under the child (seen: acknowledged enqueues lost). The child itself never touches
    /// these locks: it builds its own per-process state (see `local`).
    pub fn before_fork(&self) {
        let local = self.local.get();
        let mut writer = local.writer.lock();
        let mut reader = local.reader.lock();
        let mut checkpointer = local.checkpointer.conn.lock();
        drop(writer.take());
        drop(reader.take());
        drop(checkpointer.take());
        std::mem::forget(writer);
        std::mem::forget(reader);
        std::mem::forget(checkpointer);
    }

    /// Right after `fork()`, in the parent: releases what `before_fork` holds.
    pub fn after_fork_in_parent(&self) {
        let local = self.local.get();
        // SAFETY: `before_fork` locked both in this process and forgot the guards.
        unsafe {
            local.checkpointer.conn.force_unlock();
            local.reader.force_unlock();
            local.writer.force_unlock();
        }
    }

    fn with_conn<T>(
        &self,
        which: impl FnOnce(&Local) -> &Mutex<Option<Connection>>,
        f: impl FnOnce(&mut Connection) -> Result<T>,
    ) -> Result<T> {
        // parking_lot: no poisoning; a panic mid-call leaves the connection usable (SQLite
        // rolls back any open transaction when it is dropped).
        busy::set_patience(self.options.busy_timeout);
        let local = self.local.get();
        let mutex = which(local);
        let mut slot = mutex.lock();
        if slot.is_none() {
            let mut conn = open::connect(&self.path, &self.options)?;
            if std::ptr::eq(mutex, &*local.writer) {
                open::make_writer(&conn)?;
                local.checkpointer.attach(&mut conn)?;
            }
            *slot = Some(conn);
        }
        let conn = slot.as_mut().expect("connection opened above");
        f(conn).map_err(|e| with_path(e, &self.path))
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer, committing on success.
    /// Both claims (see `claim::claim`): from every group, or only from `only` (sorted, no
    /// duplicates).
    fn lease_ready(
        &self,
        queue: &str,
        only: Option<&[String]>,
        worker: &str,
        limit: usize,
        lease_ms: Millis,
    ) -> Result<Vec<ClaimedTask>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        validate::name("worker", worker)?;
        let token = new_token();
        let task_events = self.options.task_events;
        let (tasks, now) = self.write(|tx, now| {
            let lease = claim::Lease {
                worker,
                limit,
                now,
                expires_at: now + lease_ms,
                token,
                task_events,
            };
            Ok((claim::claim(tx, queue, only, &lease)?, now))
        })?;
        self.local
            .get()
            .metrics
            .lock()
            .record_claims(queue, &tasks, now);
        Ok(tasks)
    }

    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>, Millis) -> Result<T>) -> Result<T> {
        self.with_conn(
            |l| &l.writer,
            |conn| {
                let before = conn.total_changes();
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = self.clock.now_ms();
                let out = f(&tx, now)?;
                tx.commit()?;
                // Only a write that changed rows wakes waiters (an empty claim must not).
                if conn.total_changes() != before {
                    self.local.get().changes.bump();
                }
                Ok(out)
            },
        )
    }

    /// Where the file stands now, for `wait_for_change`.
    pub fn change_token(&self) -> Result<ChangeToken> {
        let count = self.local.get().changes.count();
        Ok((count, self.data_version()?))
    }

    /// `change_token`, if it can be had without waiting (the reader connection open and
    /// free); `None` otherwise. For a caller holding a lock it would rather keep for a
    /// read of microseconds (Python's GIL: a worker that gave it up for this waited up to
    /// the 5 ms switch interval to get it back), but must not hold while waiting.
    pub fn try_change_token(&self) -> Option<Result<ChangeToken>> {
        let local = self.local.get();
        let mut reader = local.reader.try_lock()?;
        let conn = reader.as_mut()?;
        let count = local.changes.count();
        busy::set_patience(self.options.busy_timeout);
        Some(
            read_data_version(conn)
                .map(|version| (count, version))
                .map_err(|e| with_path(e, &self.path)),
        )
    }

    /// Waits until anything commits to the file after `token` was taken (in this process:
    /// at once; in another: within about a millisecond), or `timeout` passes.
    pub fn wait_for_change(
        &self,
        token: ChangeToken,
        timeout: std::time::Duration,
    ) -> Result<bool> {
        let local = self.local.get();
        local.watched.call_once(|| {
            if watch::subscribe(&self.path, &local.changes) {
                local.changes.set_watched();
            }
        });
        local.changes.wait(token, timeout, || self.data_version())
    }

    /// Wakes every `wait_for_change` in this process (e.g. a worker asked to stop).
    pub fn notify(&self) {
        self.local.get().changes.bump();
    }

    fn data_version(&self) -> Result<i64> {
        self.with_conn(|l| &l.reader, |conn| read_data_version(conn))
    }

    /// Counts a committed enqueue (see `Recorder::count_enqueued`), and flushes this
    /// process's figures when its last flush is an interval old: a producer that runs no
    /// worker (a web app) has no maintenance thread to flush its arrivals, which forecasts
    /// and alerts read from the table.
    fn count_enqueued(&self, queue: &str, tasks: &[NewTask], done: &[Enqueued]) {
        let now = self.clock.now_ms();
        let due = {
            let mut m = self.local.get().metrics.lock();
            m.count_enqueued(queue, tasks, done);
            m.producer_flush_due(now)
        };
        if due {
            // The enqueue committed: a failed flush keeps its figures for the next one.
            if let Err(e) = self.flush_metrics() {
                log::debug!("metrics flush after an enqueue failed (kept for the next): {e}");
            }
        }
    }

    /// Counts committed run ends (see `Recorder::record_runs`).
    fn record_runs(&self, ends: &[RunEnd], now: Millis) {
        if !ends.is_empty() {
            self.local.get().metrics.lock().record_runs(ends, now);
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Connection, Millis) -> Result<T>) -> Result<T> {
        self.with_conn(|l| &l.reader, |conn| f(conn, self.clock.now_ms()))
    }
}

/// Every statement cached on the writer, with one of SQLite's counters for it
/// (`SQLITE_STMTSTATUS_*`), zeroed after reading if `reset` (for tests of what ran).
#[cfg(test)]
pub(crate) fn writer_statements(
    store: &SqliteStore,
    counter: std::ffi::c_int,
    reset: bool,
) -> Vec<(String, i32)> {
    use rusqlite::ffi;
    store
        .with_conn(
            |l| &l.writer,
            |conn| {
                let mut out = Vec::new();
                // SAFETY: the handle is this locked connection's; statements are only
                // read (status counters, SQL text) while the lock is held.
                unsafe {
                    let db = conn.handle();
                    let mut stmt = ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
                    while !stmt.is_null() {
                        let sql = std::ffi::CStr::from_ptr(ffi::sqlite3_sql(stmt));
                        let n = ffi::sqlite3_stmt_status(stmt, counter, i32::from(reset));
                        out.push((sql.to_string_lossy().into_owned(), n));
                        stmt = ffi::sqlite3_next_stmt(db, stmt);
                    }
                }
                Ok(out)
            },
        )
        .unwrap()
}

/// The one value `sql` selects, read on `store`'s reader connection (for tests).
#[cfg(test)]
pub(crate) fn read_one(store: &SqliteStore, sql: &str) -> i64 {
    store
        .with_conn(
            |l| &l.reader,
            |conn| Ok(conn.query_row(sql, [], |r| r.get(0))?),
        )
        .unwrap()
}

/// `EXPLAIN QUERY PLAN` of `sql` on a fresh file, one line per step (for plan tests).
#[cfg(test)]
pub(crate) fn query_plan(sql: &str, params: impl rusqlite::Params) -> String {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("q.db"), Options::default()).unwrap();
    store
        .with_conn(
            |l| &l.reader,
            |conn| {
                let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let rows = stmt.query_map(params, |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            },
        )
        .unwrap()
        .join("\n")
}

fn with_path(err: Error, path: &Path) -> Error {
    match err {
        Error::Corrupt { path: p, reason } if p.is_empty() => Error::Corrupt {
            path: path.display().to_string(),
            reason,
        },
        Error::Foreign { path: p, tables } if p.is_empty() => Error::Foreign {
            path: path.display().to_string(),
            tables,
        },
        other => other,
    }
}

/// Leases renewed per transaction (~0.7 ms of write lock).
const HEARTBEAT_CHUNK: usize = 500;

fn new_token() -> LeaseToken {
    // Random, so tokens from different processes never collide in practice; never 0.
    fastrand::i64(1..i64::MAX)
}

impl Store for SqliteStore {
    fn enqueue(&self, queue: &str, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
        validate::name("queue", queue)?;
        validate::new_tasks(tasks, self.options.max_payload)?;
        // A large batch is its own group; small concurrent enqueues from many threads
        // share one transaction (one fsync), each caller still waiting for its commit.
        if tasks.len() > 64 {
            let done = self.write(|tx, now| {
                enqueue::insert_all(tx, queue, tasks, self.options.task_events, now)
            })?;
            self.count_enqueued(queue, tasks, &done);
            return Ok(done);
        }
        let done = self.local.get().enqueues.submit(
            (
                queue.to_string(),
                tasks.iter().map(NewTask::to_owned).collect(),
            ),
            |requests| {
                self.write(|tx, now| {
                    requests
                        .iter()
                        .map(|(queue, tasks)| {
                            enqueue::insert_all(tx, queue, tasks, self.options.task_events, now)
                        })
                        .collect()
                })
            },
        )?;
        self.count_enqueued(queue, tasks, &done);
        Ok(done)
    }

    fn claim(
        &self,
        queue: &str,
        worker: &str,
        limit: usize,
        lease_ms: Millis,
    ) -> Result<Vec<ClaimedTask>> {
        self.lease_ready(queue, None, worker, limit, lease_ms)
    }

    fn complete(&self, id: TaskId, token: LeaseToken, result: &[u8]) -> Result<()> {
        validate::size("result", result.len(), self.options.max_payload)?;
        let events = self.options.task_events;
        let (end, now) =
            self.write(|tx, now| Ok((finish::complete(tx, id, token, result, events, now)?, now)))?;
        self.record_runs(std::slice::from_ref(&end), now);
        Ok(())
    }

    fn fail(
        &self,
        id: TaskId,
        token: LeaseToken,
        error: &str,
        action: FailAction,
    ) -> Result<TaskStatus> {
        let (end, now) = self.write(|tx, now| {
            let impact = FailureImpact::default();
            Ok((
                finish::fail(tx, id, token, error, action, impact, None, now)?,
                now,
            ))
        })?;
        self.record_runs(std::slice::from_ref(&end), now);
        Ok(end.status)
    }

    fn finish_many(&self, outcomes: &[Outcome]) -> Result<Vec<Result<TaskStatus>>> {
        validate::results(outcomes, self.options.max_payload)?;
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let events = self.options.task_events;
        let (answers, ends, now) = self.write(|tx, now| {
            let (answers, ends) = finish::finish_many(tx, outcomes, events, now)?;
            Ok((answers, ends, now))
        })?;
        self.record_runs(&ends, now);
        Ok(answers)
    }

    fn heartbeat(&self, leases: &[Lease], lease_ms: Millis) -> Result<Vec<bool>> {
        // In small transactions, like pruning: a worker with 10,000 tasks claimed renews
        // them all at once, which held the write lock 13 ms (1.3 µs a lease) and stalled
        // every claim and enqueue on the file meanwhile.
        let mut held = Vec::with_capacity(leases.len());
        for chunk in leases.chunks(HEARTBEAT_CHUNK) {
            held.extend(self.write(|tx, now| finish::heartbeat(tx, chunk, now, now + lease_ms))?);
        }
        Ok(held)
    }

    fn progress(
        &self,
        id: TaskId,
        token: LeaseToken,
        progress: f64,
        message: Option<&str>,
    ) -> Result<()> {
        validate::progress(progress, message)?;
        self.write(|tx, now| finish::progress(tx, id, token, progress, message, now))
    }

    fn release(&self, id: TaskId, token: LeaseToken) -> Result<()> {
        self.write(|tx, now| finish::release(tx, id, token, now))
    }

    fn rescue_expired(&self, queue: &str) -> Result<Vec<(TaskId, TaskStatus)>> {
        // Keep to the timeline the lease holders write in (a process whose clock stepped
        // back would otherwise see every lease as far from expiry).
        if let Some(latest) = self.read(|conn, _| finish::latest_renewal(conn, queue))? {
            self.clock.raise_floor(latest);
        }
        let monotonic = self.clock.monotonic_ms();
        let (ends, now) = self.write(|tx, now| {
            let sightings = finish::lease_sightings(tx, queue, now)?;
            let overdue = {
                let leases: Vec<_> = sightings.iter().map(|(s, _)| *s).collect();
                let mut watches = self.watches.lock();
                watches
                    .entry(queue.to_string())
                    .or_default()
                    .overdue(&leases, now, monotonic)
            };
            if overdue.is_empty() {
                return Ok((Vec::new(), now));
            }
            let owners: HashMap<(TaskId, LeaseToken), &String> = sightings
                .iter()
                .map(|(s, w)| ((s.id, s.token), w))
                .collect();
            let leases: Vec<_> = overdue
                .iter()
                .map(|s| (s.id, s.token, owners[&(s.id, s.token)].clone()))
                .collect();
            let runs = run_journal::classify(&self.path, &leases);
            let overdue: Vec<finish::Overdue> = overdue
                .into_iter()
                .zip(runs)
                .map(|(lease, run)| finish::Overdue { lease, run })
                .collect();
            Ok((finish::rescue(tx, &overdue, now)?, now))
        })?;
        let charged: Vec<RunEnd> = ends
            .iter()
            .filter(|(_, c)| *c)
            .map(|(e, _)| e.clone())
            .collect();
        self.record_runs(&charged, now);
        if !ends.is_empty() {
            self.collect_run_journals();
        }
        Ok(ends.iter().map(|(e, _)| (e.task_id, e.status)).collect())
    }

    fn get(&self, queue: &str, id: TaskId) -> Result<TaskRecord> {
        self.read(|conn, _| admin::get(conn, queue, id))
    }

    fn cancel(&self, queue: &str, id: TaskId) -> Result<()> {
        let group = self.write(|tx, now| admin::cancel(tx, queue, id, now))?;
        self.local
            .get()
            .metrics
            .lock()
            .count(queue, &group, Counter::Cancelled, 1);
        Ok(())
    }

    fn requeue(&self, queue: &str, id: TaskId) -> Result<()> {
        self.write(|tx, now| admin::requeue(tx, queue, id, now))
    }

    fn history(&self, queue: &str, id: TaskId) -> Result<Vec<Transition>> {
        self.read(|conn, _| admin::history(conn, queue, id))
    }

    fn counts(&self, queue: &str) -> Result<Vec<(TaskStatus, u64)>> {
        self.read(|conn, _| admin::counts(conn, queue))
    }

    fn prune(&self, queue: &str, retention: &Retention) -> Result<u64> {
        let mut total = 0;
        // Small transactions, so pruning never holds the write lock for long.
        loop {
            let deleted =
                self.write(|tx, now| admin::prune_batch(tx, queue, retention, now, 1000))?;
            total += deleted;
            if deleted < 1000 {
                return Ok(total);
            }
        }
    }

    fn next_run_at(&self, queue: &str) -> Result<Option<Millis>> {
        self.read(|conn, _| {
            if resource_groups::queue_paused(conn, queue)? {
                return Ok(None);
            }
            admin::next_run_at(conn, queue)
        })
    }

    fn configure_group(&self, queue: &str, group: &str, config: &GroupConfig) -> Result<()> {
        validate::group(queue, group)?;
        resource_group::validate(config)?;
        self.write(|tx, now| resource_groups::configure(tx, queue, group, config, now))
    }

    fn set_group_paused(&self, queue: &str, group: &str, paused: bool) -> Result<bool> {
        validate::group(queue, group)?;
        self.write(|tx, now| resource_groups::set_paused(tx, queue, group, paused, now))
    }

    fn forget_group(&self, queue: &str, group: &str, force: bool) -> Result<bool> {
        validate::group(queue, group)?;
        self.write(|tx, now| resource_groups::forget(tx, queue, group, force, now))
    }

    fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<bool> {
        validate::name("queue", queue)?;
        self.write(|tx, now| resource_groups::set_queue_paused(tx, queue, paused, now))
    }

    fn queue_paused(&self, queue: &str) -> Result<bool> {
        self.read(|conn, _| resource_groups::queue_paused(conn, queue))
    }

    fn circuit(
        &self,
        queue: &str,
        group: &str,
        command: &CircuitCommand,
        reason: &str,
    ) -> Result<CircuitState> {
        validate::group(queue, group)?;
        validate::circuit_command(command)?;
        self.write(|tx, now| resource_groups::command(tx, queue, group, command, reason, now))
    }

    fn group_info(&self, queue: &str, group: &str) -> Result<GroupInfo> {
        validate::name("resource group", group)?;
        self.read(|conn, now| resource_groups::info(conn, queue, group, now))
    }

    fn circuit_view(&self, queue: &str, group: &str) -> Result<CircuitView> {
        validate::name("resource group", group)?;
        self.read(|conn, now| resource_groups::circuit_view(conn, queue, group, now))
    }

    fn group_names(&self, queue: &str) -> Result<Vec<String>> {
        self.read(|conn, _| resource_groups::names(conn, queue))
    }

    fn events(
        &self,
        queue: &str,
        group: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.read(|conn, _| events::read(conn, queue, group, after, limit))
    }

    fn latest_events(
        &self,
        queue: &str,
        kinds: &[String],
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.read(|conn, _| events::latest(conn, queue, kinds, up_to, limit))
    }

    fn next_unblock_at(&self, queue: &str) -> Result<Option<Millis>> {
        self.read(|conn, now| resource_groups::next_unblock_at(conn, queue, now))
    }

    fn age_priorities(&self, queue: &str, every_ms: Millis, step: i64, max: i64) -> Result<u64> {
        validate::aging(every_ms, step, max)?;
        let mut total = 0;
        // Small transactions, like pruning: aging never holds the write lock for long.
        loop {
            let aged =
                self.write(|tx, now| admin::age_batch(tx, queue, every_ms, step, max, now, 1000))?;
            total += aged;
            if aged < 1000 {
                return Ok(total);
            }
        }
    }

    fn last_event_id(&self) -> Result<i64> {
        self.read(|conn, _| {
            Ok(conn
                .prepare_cached("SELECT coalesce(max(id), 0) FROM events")?
                .query_row([], |r| r.get(0))?)
        })
    }

    fn flush_metrics(&self) -> Result<()> {
        let local = self.local.get();
        let recorder = &local.metrics;
        let taken = {
            let mut m = recorder.lock();
            m.flushed_at(self.clock.now_ms());
            m.take_interval()
        };
        if taken.is_empty() {
            return Ok(());
        }
        match self.write(|tx, now| metrics::flush(tx, &taken, now)) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Kept for the next flush: a busy or full disk must not lose figures.
                recorder.lock().restore_interval(taken);
                Err(e)
            }
        }
    }

    fn metrics(
        &self,
        queue: &str,
        since: Millis,
        raw_keep_ms: Millis,
    ) -> Result<HashMap<String, Series>> {
        self.read(|conn, now| metrics::read(conn, queue, since, now, raw_keep_ms))
    }

    fn metrics_totals(&self) -> SeriesMap {
        self.local.get().metrics.lock().totals()
    }

    fn metric_histograms(
        &self,
        queue: &str,
        group: Option<&str>,
        name: &str,
        bucket_ms: Millis,
        since: Millis,
    ) -> Result<Vec<(Millis, crate::metrics::Histogram)>> {
        self.read(|conn, _| metrics::histograms(conn, queue, group, name, bucket_ms, since))
    }

    fn record_events(&self, queue: &str, happened: &[TurnEvent]) -> Result<()> {
        validate::name("queue", queue)?;
        self.write(|tx, now| {
            happened.iter().try_for_each(|e| {
                events::record(tx, queue, e.group.as_deref(), &e.kind, &e.detail, now)
            })
        })
    }

    fn take_turn(
        &self,
        queue: &str,
        duty: &str,
        every_ms: Millis,
    ) -> Result<Option<(i64, String)>> {
        validate::name("queue", queue)?;
        self.write(|tx, now| duties::take(tx, queue, duty, every_ms, now))
    }

    fn end_turn(
        &self,
        queue: &str,
        duty: &str,
        fence: i64,
        state: &str,
        happened: &[TurnEvent],
    ) -> Result<bool> {
        self.write(|tx, now| duties::end(tx, queue, duty, fence, state, happened, now))
    }

    fn metric_series(
        &self,
        queue: &str,
        group: Option<&str>,
        name: &str,
        bucket_ms: Millis,
        since: Millis,
    ) -> Result<Vec<(Millis, f64)>> {
        self.read(|conn, _| metrics::series(conn, queue, group, name, bucket_ms, since))
    }

    fn record_samples(&self, queue: &str, group: &str, name: &str, values: &[u64]) {
        self.local
            .get()
            .metrics
            .lock()
            .samples(queue, group, name, values);
    }

    fn named_metrics(
        &self,
        queue: &str,
        prefix: &str,
        since: Millis,
        raw_keep_ms: Millis,
    ) -> Result<Vec<(String, String, crate::metrics::Histogram)>> {
        self.read(|conn, now| metrics::read_named(conn, queue, prefix, since, now, raw_keep_ms))
    }

    fn prune_observability(&self, keep: &ObservabilityRetention) -> Result<u64> {
        let mut total = self.write(|tx, now| health::prune_workers(tx, now, keep.workers_ms))?;
        // Small transactions, like task pruning.
        loop {
            let n = self.write(|tx, now| {
                Ok(events::prune(tx, now - keep.events_ms, 1000)?
                    + metrics::prune(tx, now, keep.raw_metrics_ms, keep.hourly_metrics_ms, 1000)?
                    + enqueue::end_expired_cache(tx, now, 1000)?)
            })?;
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }

    fn worker_seen(&self, worker: &WorkerInfo) -> Result<()> {
        validate::name("worker", &worker.id)?;
        self.write(|tx, now| health::worker_seen(tx, worker, now))
    }

    fn worker_stopped(&self, id: &str) -> Result<()> {
        self.write(|tx, now| health::worker_stopped(tx, id, now))
    }

    fn workers(&self, queue: &str) -> Result<Vec<WorkerInfo>> {
        self.read(|conn, _| health::workers(conn, queue))
    }

    fn oldest_due(&self, queue: &str) -> Result<Option<Millis>> {
        self.read(|conn, now| health::oldest_due(conn, queue, now))
    }

    fn dead_since(&self, queue: &str, since: Millis) -> Result<u64> {
        self.read(|conn, _| health::dead_since(conn, queue, since))
    }

    fn defer(&self, tasks: &[Unrunnable<'_>], grace_ms: Millis) -> Result<Vec<Result<Deferral>>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let (answers, ends, now) = self.write(|tx, now| {
            let mut answers = Vec::with_capacity(tasks.len());
            let mut ends = Vec::new();
            for task in tasks {
                match defer::defer(tx, task, grace_ms, now) {
                    Ok((deferral, end)) => {
                        answers.push(Ok(deferral));
                        ends.extend(end);
                    }
                    Err(Error::LeaseLost(id)) => answers.push(Err(Error::LeaseLost(id))),
                    Err(other) => return Err(other),
                }
            }
            Ok((answers, ends, now))
        })?;
        self.record_runs(&ends, now);
        Ok(answers)
    }

    fn no_processor(&self, queue: &str, alive_since: Millis) -> Result<Vec<NoProcessor>> {
        self.read(|conn, _| defer::no_processor(conn, queue, alive_since))
    }
}

impl Host for SqliteStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn max_payload(&self) -> usize {
        self.options.max_payload
    }

    fn now_ms(&self) -> Millis {
        SqliteStore::now_ms(self)
    }

    fn clock_lead_ms(&self) -> Millis {
        SqliteStore::clock_lead_ms(self)
    }

    fn change_token(&self) -> Result<ChangeToken> {
        SqliteStore::change_token(self)
    }

    fn try_change_token(&self) -> Option<Result<ChangeToken>> {
        SqliteStore::try_change_token(self)
    }

    fn wait_for_change(&self, token: ChangeToken, timeout: std::time::Duration) -> Result<bool> {
        SqliteStore::wait_for_change(self, token, timeout)
    }

    fn notify(&self) {
        SqliteStore::notify(self)
    }

    fn close(&self) {
        SqliteStore::close(self)
    }

    fn before_fork(&self) {
        SqliteStore::before_fork(self)
    }

    fn after_fork_in_parent(&self) {
        SqliteStore::after_fork_in_parent(self)
    }

    fn settings(&self) -> Result<Vec<(String, String)>> {
        self.pragmas()
    }

    fn schema_versions(&self) -> Result<Vec<i64>> {
        SqliteStore::schema_versions(self)
    }

    fn integrity_check(&self) -> Result<Vec<String>> {
        self.quick_check()
    }

    fn run_journal(&self, worker: &str, capacity: usize) -> Result<RunJournal> {
        SqliteStore::run_journal(self, worker, capacity)
    }

    fn close_in_background(self: Arc<Self>) {
        closing::close_in_background(self)
    }
}
