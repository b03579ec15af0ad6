//! Per-process metrics: counters and duration histograms per (queue, resource group),
//! kept twice: an interval part that workers flush to the `metrics` table, and a running
//! total since the process started (what a Prometheus scrape of this process reports).

use std::collections::HashMap;

use super::histogram::Histogram;
use crate::clock::Millis;
use crate::task::{ClaimedTask, Enqueued, NewTask, RunEnd, TaskStatus};

/// What is counted, by name as stored in the `metrics` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Enqueued,
    Started,
    Completed,
    Retried,
    Dead,
    Cancelled,
    /// Enqueues of a cached task answered without a new run: by a completed run's cached
    /// result, or by attaching to the identical run pending or running.
    CacheHits,
    /// Enqueues of a cached task that started a new run.
    CacheMisses,
}

impl Counter {
    pub const ALL: [Counter; 8] = [
        Counter::Enqueued,
        Counter::Started,
        Counter::Completed,
        Counter::Retried,
        Counter::Dead,
        Counter::Cancelled,
        Counter::CacheHits,
        Counter::CacheMisses,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Counter::Enqueued => "enqueued",
            Counter::Started => "started",
            Counter::Completed => "completed",
            Counter::Retried => "retried",
            Counter::Dead => "dead",
            Counter::Cancelled => "cancelled",
            Counter::CacheHits => "cache_hits",
            Counter::CacheMisses => "cache_misses",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// One (queue, group)'s figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub counts: [u64; Counter::ALL.len()],
    /// From when a task was due (enqueued, or its delay ended) to its claim.
    pub wait: Histogram,
    /// A run's duration, as the worker measured it.
    pub run: Histogram,
    /// The same per task name (stored as `task_run:<name>`): what routing by run time reads.
    pub task_runs: HashMap<String, Histogram>,
    /// Named figures a worker adds itself (the profiler's `profile:...`), in the unit the
    /// name says.
    pub samples: HashMap<String, Histogram>,
}

/// The metric name of a task's run times.
pub const TASK_RUN_PREFIX: &str = "task_run:";

fn merge_named(into: &mut HashMap<String, Histogram>, from: &HashMap<String, Histogram>) {
    for (name, h) in from {
        match into.get_mut(name) {
            Some(mine) => mine.merge(h),
            None => {
                into.insert(name.clone(), h.clone());
            }
        }
    }
}

/// The histogram named `name` in `map`, created empty (allocates only the first time).
fn named<'a>(map: &'a mut HashMap<String, Histogram>, name: &str) -> &'a mut Histogram {
    if !map.contains_key(name) {
        map.insert(name.to_string(), Histogram::default());
    }
    map.get_mut(name).expect("inserted above")
}

impl Series {
    pub fn count(&self, c: Counter) -> u64 {
        self.counts[c as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&n| n == 0)
            && self.wait.is_empty()
            && self.run.is_empty()
            && self.task_runs.is_empty()
            && self.samples.is_empty()
    }

    pub fn merge(&mut self, other: &Series) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.wait.merge(&other.wait);
        self.run.merge(&other.run);
        merge_named(&mut self.task_runs, &other.task_runs);
        merge_named(&mut self.samples, &other.samples);
    }
}

/// Series by queue, then group (nested, so a lookup by `&str` allocates nothing).
pub type SeriesMap = HashMap<String, HashMap<String, Series>>;

#[derive(Debug, Default)]
pub struct Recorder {
    /// Since the last flush.
    interval: SeriesMap,
    /// Everything flushed before (`totals` adds the interval on read): each event is
    /// recorded once, on the hot path, and merged into the totals once per flush.
    flushed: SeriesMap,
    /// When this process last flushed (or first counted an enqueue): 0 before either.
    last_flush: Millis,
}

fn series<'a>(map: &'a mut SeriesMap, queue: &str, group: &str) -> &'a mut Series {
    if !map.contains_key(queue) {
        map.insert(queue.to_string(), HashMap::new());
    }
    let groups = map.get_mut(queue).expect("inserted above");
    if !groups.contains_key(group) {
        groups.insert(group.to_string(), Series::default());
    }
    groups.get_mut(group).expect("inserted above")
}

fn merge_into(target: &mut SeriesMap, source: &SeriesMap) {
    for (queue, groups) in source {
        for (group, s) in groups {
            series(target, queue, group).merge(s);
        }
    }
}

/// `merge_into` for the totals since start: counters and the wait and run histograms only.
/// The named histograms (per task, profiler) go to the table and are not kept for the life
/// of the process, which would grow with every task name and profiled stage it ever saw.
fn merge_totals(target: &mut SeriesMap, source: &SeriesMap) {
    for (queue, groups) in source {
        for (group, s) in groups {
            let total = series(target, queue, group);
            for (a, b) in total.counts.iter_mut().zip(s.counts) {
                *a += b;
            }
            total.wait.merge(&s.wait);
            total.run.merge(&s.run);
        }
    }
}

impl Recorder {
    /// The series of one queue and group, for several updates in a row.
    pub fn series(&mut self, queue: &str, group: &str) -> &mut Series {
        series(&mut self.interval, queue, group)
    }

    pub fn count(&mut self, queue: &str, group: &str, counter: Counter, n: u64) {
        self.series(queue, group).counts[counter as usize] += n;
    }

    pub fn wait(&mut self, queue: &str, group: &str, us: u64) {
        self.series(queue, group).wait.record(us);
    }

    pub fn run(&mut self, queue: &str, group: &str, us: u64) {
        self.series(queue, group).run.record(us);
    }

    /// Counts a committed enqueue: the tasks `done` says were created (`done[i]` answers
    /// `tasks[i]`; a duplicate unique key creates nothing).
    pub fn count_enqueued(&mut self, queue: &str, tasks: &[NewTask], done: &[Enqueued]) {
        // A batch is usually one group: one lookup per run, not per task.
        let mut at = 0;
        for run in tasks.chunk_by(|a, b| a.resource_group == b.resource_group) {
            let created = done[at..at + run.len()]
                .iter()
                .filter(|e| e.created)
                .count();
            if run.iter().any(|t| t.cache_ttl.is_some()) {
                self.count_cache(queue, run, &done[at..at + run.len()]);
            }
            at += run.len();
            if created > 0 {
                self.count(
                    queue,
                    &run[0].resource_group,
                    Counter::Enqueued,
                    created as u64,
                );
            }
        }
    }

    /// Counts the cache hits and misses of one group's run of enqueues.
    fn count_cache(&mut self, queue: &str, tasks: &[NewTask], done: &[Enqueued]) {
        let series = self.series(queue, &tasks[0].resource_group);
        for (task, e) in tasks.iter().zip(done) {
            if task.cache_ttl.is_some() {
                let counter = if e.created {
                    Counter::CacheMisses
                } else {
                    Counter::CacheHits
                };
                series.counts[counter as usize] += 1;
            }
        }
    }

    /// Counts a committed claim, and how long each task waited since it was due.
    pub fn record_claims(&mut self, queue: &str, tasks: &[ClaimedTask], now: Millis) {
        // Claims usually take runs of one group: one lookup per run, not per task.
        for same_group in tasks.chunk_by(|a, b| a.resource_group == b.resource_group) {
            let series = self.series(queue, &same_group[0].resource_group);
            series.counts[Counter::Started as usize] += same_group.len() as u64;
            for t in same_group {
                series
                    .wait
                    .record(ms_to_us(now - t.run_at.max(t.created_at)));
            }
        }
    }

    /// Counts committed run ends by outcome, and their durations (as the worker measured
    /// them; from the claim for a completion reported without one).
    pub fn record_runs(&mut self, ends: &[RunEnd], now: Millis) {
        for same in ends.chunk_by(|a, b| a.queue == b.queue && a.group == b.group) {
            let series = self.series(&same[0].queue, &same[0].group);
            for e in same {
                let counter = match e.status {
                    TaskStatus::Completed => Counter::Completed,
                    TaskStatus::Pending => Counter::Retried,
                    TaskStatus::Dead => Counter::Dead,
                    _ => continue,
                };
                series.counts[counter as usize] += 1;
                let run_us = e.run_us.or_else(|| match (e.status, e.started_at) {
                    (TaskStatus::Completed, Some(start)) => Some(ms_to_us(now - start)),
                    _ => None,
                });
                if let Some(us) = run_us {
                    series.run.record(us);
                    named(&mut series.task_runs, &e.name).record(us);
                }
            }
        }
    }

    /// Adds `values` to the figure `name` of a queue and group (see `Series::samples`).
    pub fn samples(&mut self, queue: &str, group: &str, name: &str, values: &[u64]) {
        let h = named(&mut self.series(queue, group).samples, name);
        for &v in values {
            h.record(v);
        }
    }

    /// Takes what was recorded since the last call (for a flush to the table).
    /// Notes a flush at `now`.
    pub fn flushed_at(&mut self, now: Millis) {
        self.last_flush = now;
    }

    /// Whether a producer's enqueue at `now` should flush: its last flush is an interval
    /// old. A process that runs no worker (a web app) has no maintenance thread to flush
    /// its arrivals, which forecasts and alerts read from the table. Every engine asks
    /// this after counting a committed enqueue.
    pub fn producer_flush_due(&mut self, now: Millis) -> bool {
        if self.last_flush == 0 {
            self.last_flush = now;
            return false;
        }
        now - self.last_flush >= super::INTERVAL_MS
    }

    pub fn take_interval(&mut self) -> SeriesMap {
        let taken = std::mem::take(&mut self.interval);
        merge_totals(&mut self.flushed, &taken);
        taken
    }

    /// Puts back an interval whose flush failed, so nothing is lost.
    pub fn restore_interval(&mut self, taken: SeriesMap) {
        let mut back = SeriesMap::new();
        merge_into(&mut back, &taken);
        // It was merged into the totals when taken: take it out again.
        for (queue, groups) in &taken {
            for (group, s) in groups {
                let total = series(&mut self.flushed, queue, group);
                for (a, b) in total.counts.iter_mut().zip(s.counts) {
                    *a -= b;
                }
                total.wait.unmerge(&s.wait);
                total.run.unmerge(&s.run);
            }
        }
        merge_into(&mut back, &self.interval);
        self.interval = back;
    }

    /// Everything since the process started.
    pub fn totals(&self) -> SeriesMap {
        let mut all = self.flushed.clone();
        merge_totals(&mut all, &self.interval);
        all
    }
}

fn ms_to_us(ms: Millis) -> u64 {
    (ms.max(0) as u64).saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_histograms_are_flushed_not_kept_for_the_life_of_the_process() {
        let mut r = Recorder::default();
        r.samples("q", "g", "profile:stage:run", &[5, 6]);
        r.record_runs(&[ended("g", TaskStatus::Completed, Some(10))], 0);
        let taken = r.take_interval();
        assert_eq!(taken["q"]["g"].samples["profile:stage:run"].count(), 2);
        assert_eq!(taken["q"]["g"].task_runs["t"].count(), 1);
        let totals = r.totals();
        let g = &totals["q"]["g"];
        assert!(g.samples.is_empty() && g.task_runs.is_empty());
        assert_eq!((g.count(Counter::Completed), g.run.count()), (1, 1));
        r.restore_interval(taken);
        assert_eq!(
            r.take_interval()["q"]["g"].samples["profile:stage:run"].count(),
            2
        );
    }

    #[test]
    fn totals_survive_flushes_and_failed_flushes() {
        let mut r = Recorder::default();
        r.count("q", "g", Counter::Started, 2);
        r.run("q", "g", 100);
        let taken = r.take_interval();
        assert_eq!(taken["q"]["g"].count(Counter::Started), 2);
        r.count("q", "g", Counter::Started, 1);
        assert_eq!(r.totals()["q"]["g"].count(Counter::Started), 3);
        let again = r.take_interval();
        r.restore_interval(again);
        assert_eq!(r.totals()["q"]["g"].count(Counter::Started), 3);
        assert_eq!(r.take_interval()["q"]["g"].count(Counter::Started), 1);
        assert_eq!(r.totals()["q"]["g"].run.count(), 1);
    }

    fn claimed(group: &str, created_at: Millis, run_at: Millis) -> ClaimedTask {
        ClaimedTask {
            id: 1,
            token: 1,
            name: "t".into(),
            resource_group: group.into(),
            payload: Vec::new(),
            priority: 0,
            attempt: 1,
            max_attempts: 3,
            created_at,
            run_at,
            lease_expires_at: 0,
        }
    }

    fn ended(group: &str, status: TaskStatus, run_us: Option<u64>) -> RunEnd {
        RunEnd {
            task_id: 1,
            status,
            queue: "q".into(),
            group: group.into(),
            name: "t".into(),
            started_at: Some(1_000),
            kind: crate::task::RunEndKind::Succeeded,
            run_us,
        }
    }

    #[test]
    fn enqueues_count_only_the_tasks_created() {
        let mut r = Recorder::default();
        let mut other = crate::store::testing::task("t", 0);
        other.resource_group = "b".into();
        let tasks = [
            crate::store::testing::task("t", 0),
            crate::store::testing::task("t", 0),
            other,
        ];
        let done = [(1, true), (1, false), (2, true)].map(|(id, created)| Enqueued {
            id,
            created,
            cached: false,
        });
        r.count_enqueued("q", &tasks, &done);
        let totals = r.totals();
        assert_eq!(totals["q"]["default"].count(Counter::Enqueued), 1);
        assert_eq!(totals["q"]["b"].count(Counter::Enqueued), 1);
    }

    #[test]
    fn claims_count_starts_and_the_wait_since_each_task_was_due() {
        let mut r = Recorder::default();
        let tasks = [
            claimed("a", 0, 400),
            claimed("a", 900, 0),
            claimed("b", 0, 0),
        ];
        r.record_claims("q", &tasks, 1_000);
        let totals = r.totals();
        assert_eq!(totals["q"]["a"].count(Counter::Started), 2);
        assert_eq!(totals["q"]["a"].wait.count(), 2);
        assert_eq!(totals["q"]["b"].count(Counter::Started), 1);
    }

    #[test]
    fn runs_count_by_outcome_with_their_durations() {
        let mut r = Recorder::default();
        let ends = [
            ended("a", TaskStatus::Completed, Some(5)),
            ended("a", TaskStatus::Completed, None), // timed from its claim
            ended("a", TaskStatus::Pending, None),   // a retry: no duration known
            ended("a", TaskStatus::Dead, Some(7)),
            ended("a", TaskStatus::Cancelled, Some(9)), // not a run's end: not counted
        ];
        r.record_runs(&ends, 3_000);
        let a = &r.totals()["q"]["a"];
        assert_eq!(a.count(Counter::Completed), 2);
        assert_eq!(a.count(Counter::Retried), 1);
        assert_eq!(a.count(Counter::Dead), 1);
        assert_eq!(a.run.count(), 3);
    }
}
