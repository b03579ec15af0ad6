//! `Store` methods for resource groups, pauses and events: plain tuples and dicts in and
//! out; `ferroq.groups` builds the Python objects.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::queue::PyStore;
use crate::clock::Millis;
use crate::error::Error;
use crate::policy::breaker::BreakerConfig;
use crate::policy::throttle::{Adaptive, ThrottleConfig};
use crate::resource_group::{Event, GroupConfig};
use crate::store::CircuitCommand;

/// (failure_threshold, window_ms, open_ms, max_open_ms, half_open_probes)
type BreakerTuple = (u32, Millis, Millis, Millis, u32);
/// (state, open_for_ms | None, (failure_threshold, window_ms) | None)
type CircuitViewTuple = (&'static str, Option<Millis>, Option<(u32, Millis)>);
/// (min_concurrency, target_latency_ms | None, error_rate, cooldown_ms)
type AdaptiveTuple = (u32, Option<Millis>, f64, Millis);
/// (rate | None, burst, max_concurrency | None, adaptive | None)
type ThrottleTuple = (Option<f64>, f64, Option<u32>, Option<AdaptiveTuple>);
/// (id, at_ms, queue, group | None, task_id | None, kind, detail json | None)
type EventTuple = (
    i64,
    Millis,
    String,
    Option<String>,
    Option<i64>,
    String,
    Option<String>,
);

#[pymethods]
impl PyStore {
    #[pyo3(signature = (queue, group, breaker, throttle))]
    fn configure_group(
        &self,
        py: Python<'_>,
        queue: &str,
        group: &str,
        breaker: Option<BreakerTuple>,
        throttle: Option<ThrottleTuple>,
    ) -> PyResult<()> {
        let config = GroupConfig {
            breaker: breaker.map(
                |(failure_threshold, window_ms, open_ms, max_open_ms, half_open_probes)| {
                    BreakerConfig {
                        failure_threshold,
                        window_ms,
                        open_ms,
                        max_open_ms,
                        half_open_probes,
                    }
                },
            ),
            throttle: throttle.map(|(rate, burst, max_concurrency, adaptive)| ThrottleConfig {
                rate,
                burst,
                max_concurrency,
                adaptive: adaptive.map(
                    |(min_concurrency, target_latency_ms, error_rate, cooldown_ms)| Adaptive {
                        min_concurrency,
                        target_latency_ms,
                        error_rate,
                        cooldown_ms,
                    },
                ),
            }),
        };
        Ok(py.detach(|| self.store.configure_group(queue, group, &config))?)
    }

    fn set_group_paused(
        &self,
        py: Python<'_>,
        queue: &str,
        group: &str,
        paused: bool,
    ) -> PyResult<bool> {
        Ok(py.detach(|| self.store.set_group_paused(queue, group, paused))?)
    }

    fn forget_group(
        &self,
        py: Python<'_>,
        queue: &str,
        group: &str,
        force: bool,
    ) -> PyResult<bool> {
        Ok(py.detach(|| self.store.forget_group(queue, group, force))?)
    }

    fn set_queue_paused(&self, py: Python<'_>, queue: &str, paused: bool) -> PyResult<bool> {
        Ok(py.detach(|| self.store.set_queue_paused(queue, paused))?)
    }

    fn queue_paused(&self, py: Python<'_>, queue: &str) -> PyResult<bool> {
        Ok(py.detach(|| self.store.queue_paused(queue))?)
    }

    /// `command` is "open", "close" or "reset"; returns the state after it.
    #[pyo3(signature = (queue, group, command, duration_ms=None, reason=""))]
    fn circuit(
        &self,
        py: Python<'_>,
        queue: &str,
        group: &str,
        command: &str,
        duration_ms: Option<Millis>,
        reason: &str,
    ) -> PyResult<&'static str> {
        let command = match command {
            "open" => CircuitCommand::Open { duration_ms },
            "close" => CircuitCommand::Close,
            "reset" => CircuitCommand::Reset,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "a circuit command is open, close or reset, got {other:?}"
                ))
                .into());
            }
        };
        let state = py.detach(|| self.store.circuit(queue, group, &command, reason))?;
        Ok(state.as_str())
    }

    /// "closed", "open" or "half_open": the circuit as the next claim will see it.
    fn circuit_state(&self, py: Python<'_>, queue: &str, group: &str) -> PyResult<&'static str> {
        Ok(py
            .detach(|| self.store.circuit_state(queue, group))?
            .as_str())
    }

    /// (state, ms until half-open | None, (failure_threshold, window_ms) | None): what a
    /// worker's in-process breaker view learns from the file after a flush with failures.
    fn circuit_view(&self, py: Python<'_>, queue: &str, group: &str) -> PyResult<CircuitViewTuple> {
        let v = py.detach(|| self.store.circuit_view(queue, group))?;
        Ok((
            v.state.as_str(),
            v.open_for_ms,
            v.config.map(|c| (c.failure_threshold, c.window_ms)),
        ))
    }

    fn group_info<'py>(
        &self,
        py: Python<'py>,
        queue: &str,
        group: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let g = py.detach(|| self.store.group_info(queue, group))?;
        let d = PyDict::new(py);
        d.set_item("queue", g.queue)?;
        d.set_item("name", g.name)?;
        d.set_item("paused", g.paused)?;
        d.set_item("circuit", g.circuit.as_str())?;
        d.set_item("recent_failures", g.recent_failures)?;
        d.set_item("open_until", g.open_until)?;
        d.set_item("trips", g.trips)?;
        d.set_item("tokens", g.tokens)?;
        d.set_item("concurrency_limit", g.concurrency_limit)?;
        d.set_item("blocked_until", g.blocked_until)?;
        d.set_item("running", g.running)?;
        d.set_item("pending", g.pending)?;
        d.set_item("has_breaker", g.config.breaker.is_some())?;
        d.set_item("rate", g.config.throttle.and_then(|t| t.rate))?;
        d.set_item(
            "max_concurrency",
            g.config.throttle.and_then(|t| t.max_concurrency),
        )?;
        d.set_item(
            "adaptive",
            g.config.throttle.is_some_and(|t| t.adaptive.is_some()),
        )?;
        Ok(d)
    }

    fn group_names(&self, py: Python<'_>, queue: &str) -> PyResult<Vec<String>> {
        Ok(py.detach(|| self.store.group_names(queue))?)
    }

    #[pyo3(signature = (queue, group=None, after=0, limit=1000))]
    fn events(
        &self,
        py: Python<'_>,
        queue: &str,
        group: Option<&str>,
        after: i64,
        limit: usize,
    ) -> PyResult<Vec<EventTuple>> {
        let events = py.detach(|| self.store.events(queue, group, after, limit))?;
        Ok(events.into_iter().map(event_tuple).collect())
    }

    /// The newest `limit` events up to id `up_to` of these kinds (all if empty), oldest first.
    #[pyo3(signature = (queue, kinds, up_to, limit))]
    fn latest_events(
        &self,
        py: Python<'_>,
        queue: &str,
        kinds: Vec<String>,
        up_to: i64,
        limit: usize,
    ) -> PyResult<Vec<EventTuple>> {
        let events = py.detach(|| self.store.latest_events(queue, &kinds, up_to, limit))?;
        Ok(events.into_iter().map(event_tuple).collect())
    }

    fn next_unblock_at(&self, py: Python<'_>, queue: &str) -> PyResult<Option<Millis>> {
        Ok(py.detach(|| self.store.next_unblock_at(queue))?)
    }

    fn age_priorities(
        &self,
        py: Python<'_>,
        queue: &str,
        every_ms: Millis,
        step: i64,
        max: i64,
    ) -> PyResult<u64> {
        Ok(py.detach(|| self.store.age_priorities(queue, every_ms, step, max))?)
    }
}

fn event_tuple(e: Event) -> EventTuple {
    (
        e.id,
        e.at,
        e.queue,
        e.resource_group,
        e.task_id,
        e.kind,
        e.detail,
    )
}
