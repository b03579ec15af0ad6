//! The PostgreSQL storage engine: many hosts on one database. Same semantics as the SQLite
//! engine (the reference: `store::sqlite`), with the claim on `FOR UPDATE SKIP LOCKED`,
//! completions set-based and fenced by lease token, wake-ups by LISTEN/NOTIFY, and times
//! from the injected clock so every process keeps to one timeline (`clock::SteadyClock`).

mod admin;
mod claim;
mod defer;
mod duties;
mod enqueue;
mod errors;
mod events;
mod finish;
mod groups;
mod history;
mod host;
mod import;
mod listing;
mod local;
mod migrations;
mod observe;
mod operations;
mod pool;
mod rescue;
mod schedules;
mod tls;
pub mod url;
mod wakeup;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use self::local::PerProcess;
use self::pool::{Db, TxError};
use crate::clock::{Clock, Millis, SteadyClock, SystemClock};
use crate::error::{Error, Result};
use crate::metrics::{Counter, Series, SeriesMap};
use crate::policy::breaker::CircuitState;
use crate::policy::retention::Retention;
use crate::resource_group::{Event, GroupConfig, GroupInfo};
use crate::run_journal::{self, RunState};
use crate::store::lease_watch::{LeaseWatch, leave_to_holders_host};
use crate::store::sqlite::Options;
use crate::store::{
    CircuitCommand, CircuitView, Deferral, Lease, NoProcessor, ObservabilityRetention, Store,
    TurnEvent, Unrunnable, WorkerInfo,
};
use crate::task::{
    ClaimedTask, Enqueued, FailAction, LeaseToken, NewTask, Outcome, RunEnd, TaskId, TaskRecord,
    TaskStatus, Transition,
};
use crate::validate;

pub use self::url::is_postgres;

/// The engine-neutral conformance suite, run against this engine.
#[cfg(test)]
#[path = "../conformance/mod.rs"]
#[allow(clippy::duplicate_mod)] // on purpose: the same suite, once per engine
mod conformance;

#[cfg(test)]
mod tests;

/// Whether a test server is there (see `tests::server_url`).
#[cfg(test)]
fn conformance_available() -> bool {
    tests::server_url().is_some()
}

/// Conformance tests of what this engine does not support yet, skipped with a loud note
/// (none today: every test of the suite runs on PostgreSQL).
#[cfg(test)]
fn conformance_skips() -> &'static [&'static str] {
    &[]
}

/// The conformance suite's engine: the tempdir `path` names a schema of its own in the test
/// server's database (the same path, the same schema: another process's view).
#[cfg(test)]
fn conformance_engine(
    path: &std::path::Path,
    clock: Arc<crate::clock::ManualClock>,
) -> Arc<dyn crate::store::Engine> {
    let url = tests::schema_url(path);
    Arc::new(PgStore::open_with_clock(&url, Options::default(), clock).unwrap())
}

/// Times a transaction is tried when it deadlocks or fails to serialize.
const TRIES: usize = 5;

/// A task store in a PostgreSQL schema.
pub struct PgStore {
    target: url::Target,
    options: Options,
    clock: Arc<SteadyClock>,
    local: PerProcess,
    /// This process's rescuer: the leases it watches, by queue.
    watches: Mutex<HashMap<String, LeaseWatch>>,
    /// Where this host keeps its workers' run journals (see `journal_base`).
    journal_db: PathBuf,
    /// This host's name, as workers register it (`socket.gethostname()`).
    hostname: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.target.shown)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database `url` names and migrates its schema.
    pub fn open(url: &str, options: Options) -> Result<Self> {
        Self::open_with_clock(url, options, Arc::new(SystemClock))
    }

    /// `open` with an injected clock.
    pub fn open_with_clock(url: &str, options: Options, clock: Arc<dyn Clock>) -> Result<Self> {
        let target = url::parse(url)?;
        let local = PerProcess::new(target.clone())?;
        {
            let mut client = local.get()?.pool.connect()?;
            migrations::migrate(&mut client, &target.schema, clock.now_ms())?;
        }
        let clock = Arc::new(SteadyClock::new(clock));
        let store = Self {
            journal_db: journal_base(&target),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            target,
            options,
            clock,
            local,
            watches: Mutex::new(HashMap::new()),
        };
        if let Some(latest) = store.read(|db, _| admin::latest_stored_time(db))? {
            store.clock.raise_floor(latest);
        }
        Ok(store)
    }

    /// Runs `f` in one transaction, committing on success; a deadlock or serialization
    /// failure runs it again (it rolled back whole). A transaction that notified other
    /// processes wakes this process's waiters too.
    fn write<T>(
        &self,
        mut f: impl FnMut(&mut Db<'_, postgres::Transaction<'_>>, Millis) -> Result<T>,
    ) -> Result<T> {
        let local = self.local.get()?;
        let mut tries = 0;
        loop {
            tries += 1;
            let mut pooled = local.pool.get()?;
            let now = self.clock.now_ms();
            match pooled.conn().transaction(|db| f(db, now)) {
                Ok((out, notes)) => {
                    if notes.notified || !notes.skipped.is_empty() {
                        local.wakeup.bump();
                    }
                    if !notes.skipped.is_empty() {
                        local.wakeup.trail(notes.skipped);
                        local
                            .wakeup
                            .ensure_listener(&local.pool, &self.target.schema);
                    }
                    return Ok(out);
                }
                // Nothing ran: a connection the server closed while it sat in the pool (a
                // restart). Safe to run on a fresh one.
                Err(TxError::Begin(_)) if tries < TRIES && pooled.conn().is_closed() => {
                    log::debug!("reconnecting to PostgreSQL");
                }
                Err(TxError::Transient(e)) if tries < TRIES => {
                    log::debug!("retrying a transaction: {e}");
                    std::thread::sleep(Duration::from_millis(fastrand::u64(1..=5 * tries as u64)));
                }
                Err(TxError::Transient(e)) | Err(TxError::Core(e)) => return Err(e),
                Err(TxError::Pg(e)) | Err(TxError::Begin(e)) => return Err(e.into()),
            }
        }
    }

    /// Completions alone (the usual batch): one statement outside a transaction, then, only
    /// for runs of groups with settings, their accounting in a transaction of its own (a
    /// crash between the two loses that accounting, never a completion).
    fn complete_only(
        &self,
        outcomes: &[Outcome],
        channel: &str,
    ) -> Result<Vec<Result<TaskStatus>>> {
        let now = self.clock.now_ms();
        let (answers, done) =
            self.autocommit(|db| finish::complete_only(db, outcomes, channel, now))?;
        if !done.ends.is_empty() {
            self.local.get()?.wakeup.bump();
        }
        if !done.limited.is_empty() {
            self.write(|db, now| groups::account(db, &done.limited, now))?;
        }
        self.record_runs(&done.ends, now);
        Ok(answers)
    }

    /// Runs the writes of `f` outside a transaction, each statement atomic on its own (for a
    /// caller that needs no more, and saves BEGIN's and COMMIT's round trips).
    fn autocommit<T>(
        &self,
        f: impl FnOnce(&mut Db<'_, postgres::Client>) -> Result<T>,
    ) -> Result<T> {
        let local = self.local.get()?;
        let mut pooled = local.pool.get()?;
        pooled.conn().outside(f)
    }

    /// Runs `f` outside a transaction (each statement its own snapshot); once more on a
    /// fresh connection if the pooled one turns out closed (reads change nothing).
    fn read<T>(
        &self,
        mut f: impl FnMut(&mut Db<'_, postgres::Client>, Millis) -> Result<T>,
    ) -> Result<T> {
        let local = self.local.get()?;
        let mut pooled = local.pool.get()?;
        let now = self.clock.now_ms();
        match pooled.conn().outside(|db| f(db, now)) {
            Err(_) if pooled.conn().is_closed() => {
                drop(pooled);
                local.pool.get()?.conn().outside(|db| f(db, now))
            }
            other => other,
        }
    }

    /// Both claims: from every group, or only from `only`.
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
        let events = self.options.task_events;
        if only.is_none() && events != crate::store::TaskEvents::All {
            let now = self.clock.now_ms();
            let lease = claim::Lease {
                worker,
                limit,
                now,
                expires_at: now + lease_ms,
                token,
                task_events: events,
            };
            // Once more on a fresh connection if the pooled one was closed (a server
            // restart): a claim that ran but whose answer was lost only leases tasks that
            // the rescuer gives back, their attempt returned (this worker's journal never
            // saw them start).
            let fast = match self.autocommit(|db| claim::claim_unlimited(db, queue, &lease)) {
                Err(_) if self.local.get()?.pool.saw_closed() => {
                    self.autocommit(|db| claim::claim_unlimited(db, queue, &lease))?
                }
                other => other?,
            };
            if let Some(tasks) = fast {
                if let Some(mut m) = self.metrics() {
                    m.record_claims(queue, &tasks, now);
                }
                return Ok(tasks);
            }
        }
        let (tasks, now) = self.write(|db, now| {
            let lease = claim::Lease {
                worker,
                limit,
                now,
                expires_at: now + lease_ms,
                token,
                task_events: events,
            };
            Ok((claim::claim(db, queue, only, &lease)?, now))
        })?;
        if let Some(mut m) = self.metrics() {
            m.record_claims(queue, &tasks, now);
        }
        Ok(tasks)
    }

    /// The queue of the first of `tasks` (deferrals come from one worker, so one queue).
    fn queue_of(
        &self,
        db: &mut Db<'_, postgres::Transaction<'_>>,
        tasks: &[Unrunnable<'_>],
    ) -> Result<Option<String>> {
        Ok(db
            .query_opt("SELECT queue FROM tasks WHERE id = $1", &[&tasks[0].id])?
            .map(|r| r.get(0)))
    }

    fn channel(&self) -> String {
        wakeup::channel(&self.target.schema)
    }

    fn record_runs(&self, ends: &[RunEnd], now: Millis) {
        if ends.is_empty() {
            return;
        }
        if let Ok(local) = self.local.get() {
            local.metrics.lock().record_runs(ends, now);
        }
    }

    /// After a read held back at an unsettled event id: wakes this process's waiters once it
    /// may have settled, so a tail reads again even if nothing else commits.
    fn look_again_if(&self, held: bool) {
        if let (true, Ok(local)) = (held, self.local.get()) {
            local
                .wakeup
                .bump_after(Duration::from_millis(events::SETTLE_MS as u64));
        }
    }

    fn metrics(&self) -> Option<parking_lot::MutexGuard<'_, crate::metrics::Recorder>> {
        self.local.get().ok().map(|l| l.metrics.lock())
    }

    /// Deletes the journals of dead workers whose leases were all rescued or finished.
    fn collect_run_journals(&self) {
        let holds_leases = |worker: &str| {
            self.read(|db, _| {
                Ok(db
                    .query_opt(
                        "SELECT 1 FROM tasks WHERE status = 'running' AND lease_owner = $1 LIMIT 1",
                        &[&worker],
                    )?
                    .is_some())
            })
            .unwrap_or(true) // unsure: keep the journal
        };
        run_journal::collect_garbage(&self.journal_db, holds_leases);
    }
}

/// The local stand-in for the database's file that run journals are kept beside: a folder
/// of this host's temp (or runtime) directory named by server, database and schema. A
/// rescuer on another host cannot read it, and charges the attempt as for a worker without
/// a journal.
fn journal_base(target: &url::Target) -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let key: String = target
        .shown
        .trim_start_matches("postgresql://")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // `run_journal::dir_for` puts the journals beside it, in `ferroq-pg-...-runs`.
    base.join(format!("ferroq-pg-{key}"))
}

fn new_token() -> LeaseToken {
    // Random, so tokens from different processes never collide in practice; never 0.
    fastrand::i64(1..i64::MAX)
}

impl Store for PgStore {
    fn enqueue(&self, queue: &str, tasks: &[NewTask]) -> Result<Vec<Enqueued>> {
        validate::name("queue", queue)?;
        validate::new_tasks(tasks, self.options.max_payload)?;
        let channel = self.channel();
        let events = self.options.task_events;
        // In a transaction, though its usual statement is atomic alone: a BEGIN that finds
        // the connection closed (a server restart) runs again on a fresh one, where a lone
        // statement that failed might have run, and running it again would enqueue twice.
        // A large batch is its own transaction; small concurrent ones from many threads
        // share one, each caller still waiting for its commit.
        let local = self.local.get()?;
        // The channel to NOTIFY now, or none (rate-limited: owed once committed).
        let channel_for = |db: &mut Db<'_, postgres::Transaction<'_>>, queue: &str| {
            if local.wakeup.notify_now(queue) {
                Some(channel.as_str())
            } else {
                db.skipped.push(queue.to_string());
                None
            }
        };
        let done = if tasks.len() > 64 {
            self.write(|db, now| {
                let channel = channel_for(db, queue);
                enqueue::insert_all(db, queue, tasks, events, channel, now)
            })?
        } else {
            let request = (
                queue.to_string(),
                tasks.iter().map(NewTask::to_owned).collect(),
            );
            local.enqueues.submit(request, |requests| {
                self.write(|db, now| {
                    // One insert per queue over the group's tasks in order, not one per
                    // caller: each statement is a round trip to the server. The same
                    // answers (unique keys are checked in order within the batch too).
                    let mut answers = vec![Vec::new(); requests.len()];
                    let mut queues: Vec<&str> = requests.iter().map(|(q, _)| q.as_str()).collect();
                    queues.sort_unstable();
                    queues.dedup();
                    for queue in queues {
                        let mine: Vec<usize> = (0..requests.len())
                            .filter(|&i| requests[i].0 == queue)
                            .collect();
                        let tasks: Vec<NewTask<'_>> = mine
                            .iter()
                            .flat_map(|&i| requests[i].1.iter().map(NewTask::borrowed))
                            .collect();
                        let channel = channel_for(db, queue);
                        let done = enqueue::insert_all(db, queue, &tasks, events, channel, now)?;
                        let mut done = done.into_iter();
                        for &i in &mine {
                            answers[i] = done.by_ref().take(requests[i].1.len()).collect();
                        }
                    }
                    Ok(answers)
                })
            })?
        };
        let due = self.metrics().is_some_and(|mut m| {
            m.count_enqueued(queue, tasks, &done);
            m.producer_flush_due(self.clock.now_ms())
        });
        // The enqueue committed: a failed flush keeps its figures for the next one.
        if due && let Err(e) = self.flush_metrics() {
            log::debug!("metrics flush after an enqueue failed (kept for the next): {e}");
        }
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
        let outcome = Outcome::Completed {
            id,
            token,
            result: result.to_vec(),
            run_us: None,
        };
        self.finish_many(std::slice::from_ref(&outcome))?
            .pop()
            .expect("one answer per outcome")
            .map(|_| ())
    }

    fn fail(
        &self,
        id: TaskId,
        token: LeaseToken,
        error: &str,
        action: FailAction,
    ) -> Result<TaskStatus> {
        let outcome = Outcome::Failed {
            id,
            token,
            error: error.to_string(),
            action,
            impact: Default::default(),
            run_us: None,
        };
        self.finish_many(std::slice::from_ref(&outcome))?
            .pop()
            .expect("one answer per outcome")
    }

    fn finish_many(&self, outcomes: &[Outcome]) -> Result<Vec<Result<TaskStatus>>> {
        validate::results(outcomes, self.options.max_payload)?;
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let events = self.options.task_events;
        let channel = self.channel();
        let only_completions = outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Completed { .. }));
        if only_completions && events != crate::store::TaskEvents::All {
            return self.complete_only(outcomes, &channel);
        }
        let (answers, ends, now) = self.write(|db, now| {
            let (answers, ends) = finish::finish_many(db, outcomes, events, &channel, now)?;
            Ok((answers, ends, now))
        })?;
        self.record_runs(&ends, now);
        Ok(answers)
    }

    fn heartbeat(&self, leases: &[Lease], lease_ms: Millis) -> Result<Vec<bool>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|db, now| finish::heartbeat(db, leases, now, now + lease_ms))
    }

    fn progress(
        &self,
        id: TaskId,
        token: LeaseToken,
        progress: f64,
        message: Option<&str>,
    ) -> Result<()> {
        validate::progress(progress, message)?;
        self.write(|db, now| finish::progress(db, id, token, progress, message, now))
    }

    fn release(&self, id: TaskId, token: LeaseToken) -> Result<()> {
        let channel = self.channel();
        self.write(|db, now| {
            let queue = finish::release(db, id, token, now)?;
            events::notify(db, &channel, &queue)
        })
    }

    fn rescue_expired(&self, queue: &str) -> Result<Vec<(TaskId, TaskStatus)>> {
        // Keep to the timeline the lease holders write in (see the SQLite engine).
        if let Some(latest) = self.read(|db, _| rescue::latest_renewal(db, queue))? {
            self.clock.raise_floor(latest);
        }
        let monotonic = self.clock.monotonic_ms();
        let now = self.clock.now_ms();
        let sightings = self.read(|db, _| rescue::lease_sightings(db, queue, now))?;
        let overdue = {
            let leases: Vec<_> = sightings.iter().map(|(s, _)| *s).collect();
            let mut watches = self.watches.lock();
            watches
                .entry(queue.to_string())
                .or_default()
                .overdue(&leases, now, monotonic)
        };
        if overdue.is_empty() {
            return Ok(Vec::new());
        }
        let owners: HashMap<(TaskId, LeaseToken), &String> = sightings
            .iter()
            .map(|(s, w)| ((s.id, s.token), w))
            .collect();
        let leases: Vec<_> = overdue
            .iter()
            .map(|s| (s.id, s.token, owners[&(s.id, s.token)].clone()))
            .collect();
        let runs = run_journal::classify(&self.journal_db, &leases);
        // A holder's journal is a file on its own host: leave what only that host can tell
        // apart (claimed but never started) to a rescuer there while one lives.
        let mut unknown: Vec<String> = leases
            .iter()
            .zip(&runs)
            .filter(|(_, run)| **run == RunState::Unknown)
            .map(|(lease, _)| lease.2.clone())
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        let siblings = if unknown.is_empty() {
            HashMap::new()
        } else {
            self.read(|db, _| rescue::siblings_seen(db, queue, &unknown, &self.hostname))?
        };
        let overdue: Vec<rescue::Overdue> = {
            let watches = self.watches.lock();
            let watch = &watches[queue];
            overdue
                .into_iter()
                .zip(runs)
                .zip(&leases)
                .filter(|((lease, run), (_, _, owner))| {
                    let leave = *run == RunState::Unknown
                        && leave_to_holders_host(
                            lease,
                            siblings.get(owner).copied(),
                            watch.watched_for(lease, monotonic),
                        );
                    if leave {
                        log::debug!(
                            "task {} of {owner}: left to a rescuer on its worker's host",
                            lease.id
                        );
                    }
                    !leave
                })
                .map(|((lease, run), _)| rescue::Overdue { lease, run })
                .collect()
        };
        if overdue.is_empty() {
            return Ok(Vec::new());
        }
        let channel = self.channel();
        let (ends, now) = self.write(|db, now| {
            let ends = rescue::rescue(db, &overdue, now)?;
            if !ends.is_empty() {
                events::notify(db, &channel, queue)?;
            }
            Ok((ends, now))
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
        self.read(|db, _| admin::get(db, queue, id))
    }

    fn cancel(&self, queue: &str, id: TaskId) -> Result<()> {
        let channel = self.channel();
        let group = self.write(|db, now| {
            let group = admin::cancel(db, queue, id, now)?;
            events::notify(db, &channel, queue)?;
            Ok(group)
        })?;
        if let Some(mut m) = self.metrics() {
            m.count(queue, &group, Counter::Cancelled, 1);
        }
        Ok(())
    }

    fn requeue(&self, queue: &str, id: TaskId) -> Result<()> {
        let channel = self.channel();
        self.write(|db, now| {
            admin::requeue(db, queue, id, now)?;
            events::notify(db, &channel, queue)
        })
    }

    fn history(&self, queue: &str, id: TaskId) -> Result<Vec<Transition>> {
        self.read(|db, _| admin::history(db, queue, id))
    }

    fn counts(&self, queue: &str) -> Result<Vec<(TaskStatus, u64)>> {
        self.read(|db, _| admin::counts(db, queue))
    }

    fn prune(&self, queue: &str, retention: &Retention) -> Result<u64> {
        let mut total = 0;
        // Batched deletes: short transactions, and autovacuum keeps up between them.
        loop {
            let deleted =
                self.write(|db, now| admin::prune_batch(db, queue, retention, now, 1000))?;
            total += deleted;
            if deleted < 1000 {
                return Ok(total);
            }
        }
    }

    fn next_run_at(&self, queue: &str) -> Result<Option<Millis>> {
        self.read(|db, _| {
            if admin::queue_paused(db, queue)? {
                return Ok(None);
            }
            admin::next_run_at(db, queue)
        })
    }

    fn configure_group(&self, queue: &str, group: &str, config: &GroupConfig) -> Result<()> {
        validate::group(queue, group)?;
        crate::resource_group::validate(config)?;
        let channel = self.channel();
        self.write(|db, now| {
            groups::configure(db, queue, group, config, now)?;
            events::notify(db, &channel, queue)
        })
    }

    fn set_group_paused(&self, queue: &str, group: &str, paused: bool) -> Result<bool> {
        validate::group(queue, group)?;
        let channel = self.channel();
        self.write(|db, now| {
            let changed = groups::set_paused(db, queue, group, paused, now)?;
            if changed && !paused {
                events::notify(db, &channel, queue)?;
            }
            Ok(changed)
        })
    }

    fn forget_group(&self, queue: &str, group: &str, force: bool) -> Result<bool> {
        validate::group(queue, group)?;
        let channel = self.channel();
        self.write(|db, now| {
            let gone = groups::forget(db, queue, group, force, now)?;
            if gone {
                events::notify(db, &channel, queue)?;
            }
            Ok(gone)
        })
    }

    fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<bool> {
        validate::name("queue", queue)?;
        let channel = self.channel();
        self.write(|db, now| {
            let changed = admin::set_queue_paused(db, queue, paused, now)?;
            if changed && !paused {
                events::notify(db, &channel, queue)?;
            }
            Ok(changed)
        })
    }

    fn queue_paused(&self, queue: &str) -> Result<bool> {
        self.read(|db, _| admin::queue_paused(db, queue))
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
        let channel = self.channel();
        self.write(|db, now| {
            let state = groups::command(db, queue, group, command, reason, now)?;
            events::notify(db, &channel, queue)?;
            Ok(state)
        })
    }

    fn group_info(&self, queue: &str, group: &str) -> Result<GroupInfo> {
        validate::name("resource group", group)?;
        self.read(|db, now| groups::info(db, queue, group, now))
    }

    fn circuit_view(&self, queue: &str, group: &str) -> Result<CircuitView> {
        validate::name("resource group", group)?;
        self.read(|db, now| groups::circuit_view(db, queue, group, now))
    }

    fn group_names(&self, queue: &str) -> Result<Vec<String>> {
        self.read(|db, _| groups::names(db, queue))
    }

    fn events(
        &self,
        queue: &str,
        group: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let (events, held) = self.read(|db, _| events::read(db, queue, group, after, limit))?;
        self.look_again_if(held);
        Ok(events)
    }

    fn latest_events(
        &self,
        queue: &str,
        kinds: &[String],
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.read(|db, _| events::latest(db, queue, kinds, up_to, limit))
    }

    fn next_unblock_at(&self, queue: &str) -> Result<Option<Millis>> {
        self.read(|db, now| groups::next_unblock_at(db, queue, now))
    }

    fn age_priorities(&self, queue: &str, every_ms: Millis, step: i64, max: i64) -> Result<u64> {
        validate::aging(every_ms, step, max)?;
        let mut total = 0;
        // Small transactions, like retention.
        loop {
            let aged = self
                .write(|db, now| listing::age_batch(db, queue, (every_ms, step, max), now, 1000))?;
            total += aged;
            if aged < 1000 {
                return Ok(total);
            }
        }
    }

    fn last_event_id(&self) -> Result<i64> {
        let (id, held) = self.read(|db, _| events::last_settled(db))?;
        self.look_again_if(held);
        Ok(id)
    }

    fn flush_metrics(&self) -> Result<()> {
        let local = self.local.get()?;
        let taken = {
            let mut m = local.metrics.lock();
            m.flushed_at(self.clock.now_ms());
            m.take_interval()
        };
        if taken.is_empty() {
            return Ok(());
        }
        match self.write(|db, now| observe::flush(db, &taken, now)) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Kept for the next flush: a lost connection must not lose figures.
                local.metrics.lock().restore_interval(taken);
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
        self.read(|db, now| observe::read(db, queue, since, now, raw_keep_ms))
    }

    fn metrics_totals(&self) -> SeriesMap {
        self.metrics().map(|m| m.totals()).unwrap_or_default()
    }

    fn record_samples(&self, queue: &str, group: &str, name: &str, values: &[u64]) {
        if let Some(mut m) = self.metrics() {
            m.samples(queue, group, name, values);
        }
    }

    fn named_metrics(
        &self,
        queue: &str,
        prefix: &str,
        since: Millis,
        raw_keep_ms: Millis,
    ) -> Result<Vec<(String, String, crate::metrics::Histogram)>> {
        self.read(|db, now| observe::read_named(db, queue, prefix, since, now, raw_keep_ms))
    }

    fn metric_series(
        &self,
        queue: &str,
        group: Option<&str>,
        name: &str,
        bucket_ms: Millis,
        since: Millis,
    ) -> Result<Vec<(Millis, f64)>> {
        self.read(|db, _| observe::series(db, queue, group, name, bucket_ms, since))
    }

    fn metric_histograms(
        &self,
        queue: &str,
        group: Option<&str>,
        name: &str,
        bucket_ms: Millis,
        since: Millis,
    ) -> Result<Vec<(Millis, crate::metrics::Histogram)>> {
        self.read(|db, _| observe::histograms(db, queue, group, name, bucket_ms, since))
    }

    fn record_events(&self, queue: &str, happened: &[TurnEvent]) -> Result<()> {
        validate::name("queue", queue)?;
        self.write(|db, now| duties::record(db, queue, happened, now))
    }

    fn take_turn(
        &self,
        queue: &str,
        duty: &str,
        every_ms: Millis,
    ) -> Result<Option<(i64, String)>> {
        validate::name("queue", queue)?;
        self.write(|db, now| duties::take(db, queue, duty, every_ms, now))
    }

    fn end_turn(
        &self,
        queue: &str,
        duty: &str,
        fence: i64,
        state: &str,
        happened: &[TurnEvent],
    ) -> Result<bool> {
        self.write(|db, now| duties::end(db, queue, duty, fence, state, happened, now))
    }

    fn prune_observability(&self, keep: &ObservabilityRetention) -> Result<u64> {
        let mut total = self.write(|db, now| observe::prune_workers(db, now, keep.workers_ms))?;
        // Batched deletes, like task retention.
        loop {
            let n = self.write(|db, now| {
                Ok(observe::prune_batch(db, now, keep, 1000)?
                    + enqueue::end_expired_cache(db, now, 1000)?)
            })?;
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }

    fn worker_seen(&self, worker: &WorkerInfo) -> Result<()> {
        validate::name("worker", &worker.id)?;
        self.write(|db, now| observe::worker_seen(db, worker, now))
    }

    fn worker_stopped(&self, id: &str) -> Result<()> {
        self.write(|db, now| observe::worker_stopped(db, id, now))
    }

    fn workers(&self, queue: &str) -> Result<Vec<WorkerInfo>> {
        self.read(|db, _| observe::workers(db, queue))
    }

    fn oldest_due(&self, queue: &str) -> Result<Option<Millis>> {
        self.read(|db, now| observe::oldest_due(db, queue, now))
    }

    fn dead_since(&self, queue: &str, since: Millis) -> Result<u64> {
        self.read(|db, _| observe::dead_since(db, queue, since))
    }

    fn defer(&self, tasks: &[Unrunnable<'_>], grace_ms: Millis) -> Result<Vec<Result<Deferral>>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let channel = self.channel();
        let (answers, ends, now) = self.write(|db, now| {
            let mut answers = Vec::with_capacity(tasks.len());
            let mut ends = Vec::new();
            for task in tasks {
                match defer::defer(db, task, grace_ms, now) {
                    Ok((deferral, end)) => {
                        answers.push(Ok(deferral));
                        ends.extend(end);
                    }
                    Err(Error::LeaseLost(id)) => answers.push(Err(Error::LeaseLost(id))),
                    Err(other) => return Err(other),
                }
            }
            if let Some(queue) = self.queue_of(db, tasks)? {
                events::notify(db, &channel, &queue)?;
            }
            Ok((answers, ends, now))
        })?;
        self.record_runs(&ends, now);
        Ok(answers)
    }

    fn no_processor(&self, queue: &str, alive_since: Millis) -> Result<Vec<NoProcessor>> {
        self.read(|db, _| defer::no_processor(db, queue, alive_since))
    }
}
