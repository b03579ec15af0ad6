//! `Store` methods for metrics, workers and health: plain values out (durations in µs);
//! `ferroq.observe` turns them into Python objects.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::queue::PyStore;
use crate::clock::Millis;
use crate::metrics::recorder::TASK_RUN_PREFIX;
use crate::metrics::{Counter, Histogram, Series};
use crate::store::{ObservabilityRetention, TurnEvent, WorkerInfo};

/// (count, sum_us, max_us, p50_us, p95_us, p99_us)
type Summary = (u64, u64, u64, u64, u64, u64);
/// (count, sum_us, cumulative counts at each bound)
type Buckets = (u64, u64, Vec<u64>);

fn summary(h: &Histogram) -> Summary {
    (
        h.count(),
        h.sum_us(),
        h.max_us(),
        h.quantile_us(0.5),
        h.quantile_us(0.95),
        h.quantile_us(0.99),
    )
}

fn series_dict<'py>(py: Python<'py>, s: &Series) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for c in Counter::ALL {
        d.set_item(c.as_str(), s.count(c))?;
    }
    d.set_item("wait", summary(&s.wait))?;
    d.set_item("run", summary(&s.run))?;
    Ok(d)
}

fn turn_events(happened: Vec<(Option<String>, String, String)>) -> Vec<TurnEvent> {
    happened
        .into_iter()
        .map(|(group, kind, detail)| TurnEvent {
            group,
            kind,
            detail,
        })
        .collect()
}

#[pymethods]
impl PyStore {
    fn last_event_id(&self, py: Python<'_>) -> PyResult<i64> {
        Ok(py.detach(|| self.store.last_event_id())?)
    }

    /// Adds this process's figures since its last flush into the metrics table.
    fn flush_metrics(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.store.flush_metrics())?)
    }

    /// {group: {counter: n, "wait": summary, "run": summary}} over [since_ms, now].
    fn metrics<'py>(
        &self,
        py: Python<'py>,
        queue: &str,
        since_ms: Millis,
        raw_keep_ms: Millis,
    ) -> PyResult<Bound<'py, PyDict>> {
        let by_group = py.detach(|| self.store.metrics(queue, since_ms, raw_keep_ms))?;
        let d = PyDict::new(py);
        for (group, s) in &by_group {
            d.set_item(group, series_dict(py, s)?)?;
        }
        Ok(d)
    }

    /// [(interval start ms, summary)] of one duration histogram per interval, summary as
    /// in `metrics` (see `Store::metric_histograms`).
    #[pyo3(signature = (queue, group, name, bucket_ms, since_ms))]
    fn metric_histograms(
        &self,
        py: Python<'_>,
        queue: &str,
        group: Option<&str>,
        name: &str,
        bucket_ms: Millis,
        since_ms: Millis,
    ) -> PyResult<Vec<(Millis, Summary)>> {
        let rows = py.detach(|| {
            self.store
                .metric_histograms(queue, group, name, bucket_ms, since_ms)
        })?;
        Ok(rows.iter().map(|(s, h)| (*s, summary(h))).collect())
    }

    /// Records [(group | None, kind, detail JSON)] as events of `queue`.
    fn record_events(
        &self,
        py: Python<'_>,
        queue: &str,
        happened: Vec<(Option<String>, String, String)>,
    ) -> PyResult<()> {
        let happened = turn_events(happened);
        Ok(py.detach(|| self.store.record_events(queue, &happened))?)
    }

    /// Takes a shared duty's turn: (fence, saved state JSON), or None (see `Store::take_turn`).
    fn take_turn(
        &self,
        py: Python<'_>,
        queue: &str,
        duty: &str,
        every_ms: Millis,
    ) -> PyResult<Option<(i64, String)>> {
        Ok(py.detach(|| self.store.take_turn(queue, duty, every_ms))?)
    }

    /// Ends turn `fence` (see `Store::end_turn`): whether it was still this turn.
    fn end_turn(
        &self,
        py: Python<'_>,
        queue: &str,
        duty: &str,
        fence: i64,
        state: &str,
        happened: Vec<(Option<String>, String, String)>,
    ) -> PyResult<bool> {
        let happened = turn_events(happened);
        Ok(py.detach(|| self.store.end_turn(queue, duty, fence, state, &happened))?)
    }

    /// [(interval start ms, value)] of one stored counter (see `Store::metric_series`).
    #[pyo3(signature = (queue, group, name, bucket_ms, since_ms))]
    fn metric_series(
        &self,
        py: Python<'_>,
        queue: &str,
        group: Option<&str>,
        name: &str,
        bucket_ms: Millis,
        since_ms: Millis,
    ) -> PyResult<Vec<(Millis, f64)>> {
        Ok(py.detach(|| {
            self.store
                .metric_series(queue, group, name, bucket_ms, since_ms)
        })?)
    }

    /// Adds `values` to this process's histogram `name` (flushed with the metrics).
    fn record_samples(&self, queue: &str, group: &str, name: &str, values: Vec<u64>) {
        self.store.record_samples(queue, group, name, &values);
    }

    /// [(group, name, summary)] of the stored histograms named `prefix...` since `since_ms`.
    fn named_metrics(
        &self,
        py: Python<'_>,
        queue: &str,
        prefix: &str,
        since_ms: Millis,
        raw_keep_ms: Millis,
    ) -> PyResult<Vec<(String, String, Summary)>> {
        let rows = py.detach(|| {
            self.store
                .named_metrics(queue, prefix, since_ms, raw_keep_ms)
        })?;
        Ok(rows
            .into_iter()
            .map(|(group, name, h)| (group, name, summary(&h)))
            .collect())
    }

    /// {task name: summary} of every task's run times since `since_ms`, all groups merged.
    fn task_run_times(
        &self,
        py: Python<'_>,
        queue: &str,
        since_ms: Millis,
        raw_keep_ms: Millis,
    ) -> PyResult<Vec<(String, Summary)>> {
        let rows = py.detach(|| {
            self.store
                .named_metrics(queue, TASK_RUN_PREFIX, since_ms, raw_keep_ms)
        })?;
        Ok(crate::metrics::merge_by_name(rows)
            .into_iter()
            .map(|(name, h)| (name[TASK_RUN_PREFIX.len()..].to_string(), summary(&h)))
            .collect())
    }

    /// This process's totals since it started, per (queue, group): counters, and each
    /// histogram as (count, sum_us, cumulative counts at `bounds_us`).
    #[allow(clippy::type_complexity)]
    fn metrics_totals<'py>(
        &self,
        py: Python<'py>,
        bounds_us: Vec<u64>,
    ) -> PyResult<Vec<(String, String, Bound<'py, PyDict>, Buckets, Buckets)>> {
        let totals = self.store.metrics_totals();
        let buckets = |h: &Histogram| -> Buckets {
            let cumulative = bounds_us.iter().map(|&b| h.count_at_most(b)).collect();
            (h.count(), h.sum_us(), cumulative)
        };
        let mut out = Vec::new();
        for (queue, groups) in &totals {
            for (group, s) in groups {
                let counts = PyDict::new(py);
                for c in Counter::ALL {
                    counts.set_item(c.as_str(), s.count(c))?;
                }
                out.push((
                    queue.clone(),
                    group.clone(),
                    counts,
                    buckets(&s.wait),
                    buckets(&s.run),
                ));
            }
        }
        Ok(out)
    }

    fn prune_observability(
        &self,
        py: Python<'_>,
        events_ms: Millis,
        raw_metrics_ms: Millis,
        hourly_metrics_ms: Millis,
        workers_ms: Millis,
    ) -> PyResult<u64> {
        let keep = ObservabilityRetention {
            events_ms,
            raw_metrics_ms,
            hourly_metrics_ms,
            workers_ms,
        };
        Ok(py.detach(|| self.store.prune_observability(&keep))?)
    }

    #[allow(clippy::too_many_arguments)]
    fn worker_seen(
        &self,
        py: Python<'_>,
        id: String,
        queue: String,
        hostname: String,
        pid: i64,
        concurrency: i64,
        pool: String,
    ) -> PyResult<()> {
        let worker = WorkerInfo {
            id,
            queue,
            hostname,
            pid,
            concurrency,
            pool,
            started_at: 0,
            last_seen: 0,
            stopped_at: None,
            running: 0,
        };
        Ok(py.detach(|| self.store.worker_seen(&worker))?)
    }

    fn worker_stopped(&self, py: Python<'_>, id: &str) -> PyResult<()> {
        Ok(py.detach(|| self.store.worker_stopped(id))?)
    }

    /// Registered workers as dicts, most recently seen first.
    fn workers<'py>(&self, py: Python<'py>, queue: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let workers = py.detach(|| self.store.workers(queue))?;
        workers
            .into_iter()
            .map(|w| {
                let d = PyDict::new(py);
                d.set_item("id", w.id)?;
                d.set_item("queue", w.queue)?;
                d.set_item("hostname", w.hostname)?;
                d.set_item("pid", w.pid)?;
                d.set_item("concurrency", w.concurrency)?;
                d.set_item("pool", w.pool)?;
                d.set_item("started_at", w.started_at)?;
                d.set_item("last_seen", w.last_seen)?;
                d.set_item("stopped_at", w.stopped_at)?;
                d.set_item("running", w.running)?;
                Ok(d)
            })
            .collect()
    }

    fn oldest_due(&self, py: Python<'_>, queue: &str) -> PyResult<Option<Millis>> {
        Ok(py.detach(|| self.store.oldest_due(queue))?)
    }

    fn dead_since(&self, py: Python<'_>, queue: &str, since_ms: Millis) -> PyResult<u64> {
        Ok(py.detach(|| self.store.dead_since(queue, since_ms))?)
    }

    /// `(task name, workers without a processor for it, pending tasks of that name)` for
    /// the names workers seen since `alive_since_ms` deferred.
    fn no_processor(
        &self,
        py: Python<'_>,
        queue: &str,
        alive_since_ms: Millis,
    ) -> PyResult<Vec<(String, Vec<String>, u64)>> {
        let found = py.detach(|| self.store.no_processor(queue, alive_since_ms))?;
        Ok(found
            .into_iter()
            .map(|n| (n.task, n.workers, n.pending))
            .collect())
    }
}
