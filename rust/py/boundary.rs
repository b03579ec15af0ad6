//! The named records that cross the Python boundary on the hot path: a new task (in), a
//! claimed task (out) and a run's outcome (in). Each is a frozen class with named fields
//! instead of a positional tuple, so neither side can swap two fields of the same type.
//!
//! `ClaimedTask` holds Python objects made once in Rust: its fields are plain object slots,
//! read without a call into Rust (PyO3 serves `Py<T>` fields of a frozen class as members).

use std::borrow::Cow;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString};

use crate::clock::Millis;
use crate::task::{FailAction, FailureImpact, NewTask, Outcome};

/// A task to insert: `ferroq._core.NewTask(name, group, payload, priority, run_at_ms,
/// max_attempts, unique_key, cache_ttl_ms=None)`. With `cache_ttl_ms`, a completed run is
/// the result of identical enqueues (same `unique_key`) for that long.
#[pyclass(name = "NewTask", module = "ferroq._core", frozen, get_all)]
pub struct PyNewTask {
    name: Py<PyString>,
    group: Py<PyString>,
    payload: Py<PyBytes>,
    priority: i64,
    run_at_ms: Option<Millis>,
    max_attempts: i64,
    unique_key: Option<Py<PyString>>,
    cache_ttl_ms: Option<Millis>,
}

#[pymethods]
impl PyNewTask {
    #[new]
    #[pyo3(signature = (name, group, payload, priority, run_at_ms, max_attempts, unique_key, cache_ttl_ms=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: Py<PyString>,
        group: Py<PyString>,
        payload: Py<PyBytes>,
        priority: i64,
        run_at_ms: Option<Millis>,
        max_attempts: i64,
        unique_key: Option<Py<PyString>>,
        cache_ttl_ms: Option<Millis>,
    ) -> Self {
        Self {
            name,
            group,
            payload,
            priority,
            run_at_ms,
            max_attempts,
            unique_key,
            cache_ttl_ms,
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "NewTask(name={}, group={}, priority={}, run_at_ms={:?}, max_attempts={})",
            self.name.bind(py),
            self.group.bind(py),
            self.priority,
            self.run_at_ms,
            self.max_attempts
        )
    }
}

impl PyNewTask {
    /// The task as the core takes it, borrowing its text and payload. `InvalidArgument`
    /// for text that is not valid Unicode (a lone surrogate).
    pub(super) fn core<'a>(&'a self, py: Python<'a>) -> PyResult<NewTask<'a>> {
        Ok(NewTask {
            name: Cow::Borrowed(super::queue::utf8("task name", self.name.bind(py))?),
            resource_group: Cow::Borrowed(super::queue::utf8(
                "resource_group",
                self.group.bind(py),
            )?),
            payload: Cow::Borrowed(self.payload.bind(py).as_bytes()),
            priority: self.priority,
            run_at: self.run_at_ms,
            max_attempts: self.max_attempts,
            unique_key: self
                .unique_key
                .as_ref()
                .map(|k| super::queue::utf8("unique_key", k.bind(py)))
                .transpose()?
                .map(Cow::Borrowed),
            cache_ttl: self.cache_ttl_ms,
        })
    }
}

/// A task a claim leased to this worker.
#[pyclass(name = "ClaimedTask", module = "ferroq._core", frozen, get_all)]
pub struct PyClaimedTask {
    pub(super) id: Py<PyInt>,
    /// The claim's lease token: every outcome of this run is fenced by it.
    pub(super) token: Py<PyInt>,
    pub(super) name: Py<PyString>,
    pub(super) group: Py<PyString>,
    pub(super) payload: Py<PyBytes>,
    pub(super) priority: Py<PyInt>,
    /// This run's attempt, counting from 1.
    pub(super) attempt: Py<PyInt>,
    pub(super) max_attempts: Py<PyInt>,
    pub(super) created_at_ms: Py<PyInt>,
}

#[pymethods]
impl PyClaimedTask {
    /// Made by a claim; constructible for tests and benchmarks that stand in for a store.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: Py<PyInt>,
        token: Py<PyInt>,
        name: Py<PyString>,
        group: Py<PyString>,
        payload: Py<PyBytes>,
        priority: Py<PyInt>,
        attempt: Py<PyInt>,
        max_attempts: Py<PyInt>,
        created_at_ms: Py<PyInt>,
    ) -> Self {
        Self {
            id,
            token,
            name,
            group,
            payload,
            priority,
            attempt,
            max_attempts,
            created_at_ms,
        }
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "ClaimedTask(id={}, name={}, group={}, attempt={}/{})",
            self.id.bind(py),
            self.name.bind(py),
            self.group.bind(py),
            self.attempt.bind(py),
            self.max_attempts.bind(py)
        )
    }
}

/// The outcomes of runs, for one `finish_many`: `ferroq._core.Outcomes()`, filled with
/// `completed(...)` and `failed(...)`. Each call stores the outcome as the core records it,
/// so nothing is converted again when the batch is written (or written again, on a retry).
#[pyclass(name = "Outcomes", module = "ferroq._core")]
#[derive(Default)]
pub struct PyOutcomes {
    pub(super) outcomes: Vec<Outcome>,
}

#[pymethods]
impl PyOutcomes {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// The run of `id` under lease `token` returned `result` (serialized; None: JSON null).
    #[pyo3(signature = (id, token, result, run_us=None))]
    fn completed(&mut self, id: i64, token: i64, result: Option<&[u8]>, run_us: Option<u64>) {
        self.outcomes.push(Outcome::Completed {
            id,
            token,
            result: result.unwrap_or(b"null").to_vec(),
            run_us,
        });
    }

    /// The run of `id` under lease `token` failed with `error`: retried after
    /// `retry_delay_ms`, or dead when that is None. `counts`: toward the group's breaker;
    /// `hold_ms`: holds the group that long (a Retry-After).
    #[pyo3(signature = (id, token, error, retry_delay_ms, counts=false, hold_ms=None, run_us=None))]
    #[allow(clippy::too_many_arguments)]
    fn failed(
        &mut self,
        id: i64,
        token: i64,
        error: String,
        retry_delay_ms: Option<Millis>,
        counts: bool,
        hold_ms: Option<Millis>,
        run_us: Option<u64>,
    ) {
        self.outcomes.push(Outcome::Failed {
            id,
            token,
            error,
            action: retry_delay_ms
                .map_or(FailAction::Dead, |delay_ms| FailAction::Retry { delay_ms }),
            impact: FailureImpact { counts, hold_ms },
            run_us,
        });
    }

    fn __len__(&self) -> usize {
        self.outcomes.len()
    }

    fn __repr__(&self) -> String {
        format!("Outcomes({} runs)", self.outcomes.len())
    }
}
