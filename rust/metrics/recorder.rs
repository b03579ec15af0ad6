//! Per-process metrics: counters and duration histograms per (queue, resource group),
//! kept twice: an interval part that workers flush to the `metrics` table, and a running
//! total since the process started (what a Prometheus scrape of this process reports).

use std::collections::HashMap;

use super::histogram::Histogram;

/// What is counted, by name as stored in the `metrics` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Enqueued,
    Started,
    Completed,
    Retried,
    Dead,
    Cancelled,
}

impl Counter {
    pub const ALL: [Counter; 6] = [
        Counter::Enqueued,
        Counter::Started,
        Counter::Completed,
        Counter::Retried,
        Counter::Dead,
        Counter::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Counter::Enqueued => "enqueued",
            Counter::Started => "started",
            Counter::Completed => "completed",
            Counter::Retried => "retried",
            Counter::Dead => "dead",
            Counter::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// One (queue, group)'s figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub counts: [u64; 6],
    /// From when a task was due (enqueued, or its delay ended) to its claim.
    pub wait: Histogram,
    /// A run's duration, as the worker measured it.
    pub run: Histogram,
}

impl Series {
    pub fn count(&self, c: Counter) -> u64 {
        self.counts[c as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&n| n == 0) && self.wait.is_empty() && self.run.is_empty()
    }

    pub fn merge(&mut self, other: &Series) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.wait.merge(&other.wait);
        self.run.merge(&other.run);
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

    /// Takes what was recorded since the last call (for a flush to the table).
    pub fn take_interval(&mut self) -> SeriesMap {
        let taken = std::mem::take(&mut self.interval);
        merge_into(&mut self.flushed, &taken);
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
        merge_into(&mut all, &self.interval);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
