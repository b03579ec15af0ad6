//! `ferroq._core.Store`: the storage engine as Python sees it. Every method releases the
//! GIL around storage work and converts plain values; policy lives in `ferroq` (Python).

use std::borrow::Cow;
use std::mem::ManuallyDrop;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyType};

use super::boundary::{PyClaimedTask, PyNewTask, PyOutcomes};

use super::errors::{InvalidArgument, PayloadError};
use crate::task::ClaimedTask;

use crate::clock::Millis;
use crate::policy::retention::{Keep, Retention};
use crate::store::sqlite::{Durability, Options, TaskEvents};
use crate::store::{Engine, Unrunnable};
use crate::task::{FailAction, NewTask, TaskStatus};

/// (status, deferrals in a row, run_at ms): what `defer` did to one task.
type DeferralTuple = (&'static str, i64, Millis);

/// A `TaskCall` as `enqueue_calls` read it (kept alive: its name and payload are borrowed).
struct Call<'py> {
    name: Bound<'py, PyString>,
    payload: Bound<'py, PyBytes>,
    /// Index into the distinct options read.
    options: usize,
}

/// A `TaskOptions` as the core takes it, from its `core_options()`.
struct CallOptions<'py> {
    resource_group: Bound<'py, PyString>,
    priority: i64,
    run_at: Option<Millis>,
    max_attempts: i64,
    unique_key: Option<Bound<'py, PyString>>,
    cache_ttl: Option<Millis>,
}

impl<'py> CallOptions<'py> {
    fn read(source: Bound<'py, PyAny>) -> PyResult<Self> {
        let py = source.py();
        let (resource_group, priority, run_at, max_attempts, unique_key, cache_ttl) = source
            .call_method0(intern!(py, "core_options"))?
            .extract()?;
        Ok(Self {
            resource_group,
            priority,
            run_at,
            max_attempts,
            unique_key,
            cache_ttl,
        })
    }
}

/// A clock that moves only when told to, for a store opened on it (tests and replayed
/// benchmarks): `ferroq.testing.ManualClock`.
#[pyclass(name = "ManualClock", module = "ferroq._core", frozen)]
pub struct PyManualClock {
    clock: Arc<crate::clock::ManualClock>,
}

#[pymethods]
impl PyManualClock {
    #[new]
    fn new(start_ms: Millis) -> Self {
        Self {
            clock: Arc::new(crate::clock::ManualClock::new(start_ms)),
        }
    }

    /// Time passes: `ms` milliseconds.
    fn advance(&self, ms: Millis) {
        self.clock.advance(ms)
    }

    /// Epoch milliseconds now.
    fn now_ms(&self) -> Millis {
        use crate::clock::Clock;
        self.clock.now_ms()
    }
}

/// One task store, whichever engine holds it.
#[pyclass(name = "Store", module = "ferroq._core", frozen, weakref)]
pub struct PyStore {
    /// Dropped by `Drop` below, on a thread of its own.
    pub(super) store: ManuallyDrop<Arc<dyn Engine>>,
}

impl Drop for PyStore {
    /// A store nobody closed is closed on a thread of its own (see `Host::close_in_background`).
    fn drop(&mut self) {
        // SAFETY: taken once, here; nothing uses the field afterwards.
        let store = unsafe { ManuallyDrop::take(&mut self.store) };
        store.close_in_background();
    }
}

#[pymethods]
impl PyStore {
    #[new]
    #[pyo3(signature = (path, *, durability = "full", busy_timeout = 30.0, max_payload = crate::validate::DEFAULT_MAX_PAYLOAD, task_events = "failures", clock = None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        durability: &str,
        busy_timeout: f64,
        max_payload: usize,
        task_events: &str,
        clock: Option<PyRef<'_, PyManualClock>>,
    ) -> PyResult<Self> {
        if !(busy_timeout.is_finite() && busy_timeout >= 0.0) {
            return Err(crate::Error::InvalidArgument(format!(
                "busy_timeout must be a non-negative number of seconds, got {busy_timeout}"
            ))
            .into());
        }
        let options = Options {
            durability: Durability::parse(durability)?,
            busy_timeout: Duration::from_secs_f64(busy_timeout),
            max_payload,
            task_events: match task_events {
                "failures" => TaskEvents::Failures,
                "all" => TaskEvents::All,
                other => {
                    return Err(crate::Error::InvalidArgument(format!(
                        "events must be \"failures\" or \"all\", got {other:?}"
                    ))
                    .into());
                }
            },
        };
        let clock: Arc<dyn crate::clock::Clock> = match clock {
            Some(c) => c.clock.clone(),
            None => Arc::new(crate::clock::SystemClock),
        };
        let store = py.detach(|| crate::store::open_with_clock(&path, options, clock))?;
        Ok(Self {
            store: ManuallyDrop::new(store),
        })
    }

    /// The database file, or a PostgreSQL URL (without its password). A string, not a
    /// path: a URL's `//` must survive (a `pathlib.Path` would fold it to one slash).
    #[getter]
    fn path(&self) -> String {
        self.store.location()
    }

    /// The largest accepted payload or result, in bytes.
    #[getter]
    fn max_payload(&self) -> usize {
        self.store.max_payload()
    }

    /// Closes this process's connections; they reopen on next use (see `Host::close`).
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.store.close())
    }

    /// Just before fork(): waits for calls in flight, closes the connections, holds the
    /// store's locks until `after_fork` (see `Host::before_fork`).
    fn before_fork(&self, py: Python<'_>) {
        py.detach(|| self.store.before_fork())
    }

    /// Right after fork(), in the parent: releases what `before_fork` holds. (The child
    /// builds its own per-process state and never touches it.)
    fn after_fork_in_parent(&self) {
        self.store.after_fork_in_parent()
    }

    /// Where the file stands now: pass it to `wait_for_change`. Keeps the GIL when the
    /// read needs no waiting (see `Host::try_change_token`).
    fn change_token(&self, py: Python<'_>) -> PyResult<(u64, i64)> {
        match self.store.try_change_token() {
            Some(token) => Ok(token?),
            None => Ok(py.detach(|| self.store.change_token())?),
        }
    }

    /// Waits (GIL released) until anything commits after `token`, or `timeout` seconds pass.
    /// Signal handlers still run every 50 ms (a second Ctrl-C must not wait for the timeout).
    fn wait_for_change(&self, py: Python<'_>, token: (u64, i64), timeout: f64) -> PyResult<bool> {
        const SIGNAL_CHECK: Duration = Duration::from_millis(50);
        let deadline = Instant::now() + Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        loop {
            let slice = SIGNAL_CHECK.min(deadline.saturating_duration_since(Instant::now()));
            if py.detach(|| self.store.wait_for_change(token, slice))? {
                return Ok(true);
            }
            py.check_signals()?;
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    /// Wakes every `wait_for_change` in this process.
    fn notify(&self) {
        self.store.notify()
    }

    /// Current time in epoch milliseconds, by the store's clock.
    fn now_ms(&self) -> Millis {
        self.store.now_ms()
    }

    /// Inserts `tasks` (`NewTask`s) in one transaction; `(id, created)` per task.
    fn enqueue(
        &self,
        py: Python<'_>,
        queue: &str,
        tasks: Vec<Bound<'_, PyNewTask>>,
    ) -> PyResult<Vec<(i64, bool)>> {
        let tasks: Vec<NewTask> = tasks
            .iter()
            .map(|t| t.get().core(py))
            .collect::<PyResult<_>>()?;
        let done = py.detach(|| self.store.enqueue(queue, &tasks))?;
        Ok(done.into_iter().map(|e| (e.id, e.created)).collect())
    }

    /// Inserts `calls` (any iterable of `call_type` instances: `TaskCall`) in one
    /// transaction, reading their attributes directly; returns their ids in order.
    /// `check(payload)` vets the payload of a call not of `encoded_type` (what
    /// `task.call()` makes, from the serializer): a hand-built one.
    /// Names and payloads are borrowed, not copied, and the calls of one task share its
    /// options object, whose fields (`options.core_options()`) are read once, after the
    /// last call.
    fn enqueue_calls<'py>(
        &self,
        py: Python<'py>,
        queue: &str,
        calls: &Bound<'py, PyAny>,
        call_type: &Bound<'py, PyType>,
        encoded_type: &Bound<'py, PyType>,
        check: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut sources: Vec<Bound<'py, PyAny>> = Vec::new();
        let mut read: Vec<Call<'py>> = Vec::new();
        for call in calls.try_iter()? {
            let call = call?;
            let encoded = call.get_type().is(encoded_type);
            if !encoded && !call.is_instance(call_type)? {
                return Err(InvalidArgument::new_err(format!(
                    "enqueue_many takes task.call(...) objects, got {}",
                    call.repr()?
                )));
            }
            let name = call.getattr(intern!(py, "name"))?;
            let Ok(name) = name.cast_into::<PyString>() else {
                return Err(InvalidArgument::new_err(format!(
                    "a task name must be a str, got {}",
                    call.repr()?
                )));
            };
            let payload = call.getattr(intern!(py, "payload"))?;
            let Ok(payload) = payload.cast_into::<PyBytes>() else {
                return Err(PayloadError::new_err(format!(
                    "a payload must be bytes (what the serializer's dumps returns), got {}",
                    call.repr()?
                )));
            };
            if !encoded {
                check.call1((&payload,))?;
            }
            let opts = call.getattr(intern!(py, "options"))?;
            // Usually the same object as the last call's (one task's calls), or a recent one.
            let index = match sources.iter().rev().take(8).position(|o| o.is(&opts)) {
                Some(back) => sources.len() - 1 - back,
                None => {
                    sources.push(opts);
                    sources.len() - 1
                }
            };
            read.push(Call {
                name,
                payload,
                options: index,
            });
        }
        if read.is_empty() {
            return Ok(PyList::empty(py));
        }
        // Read once the iterable is exhausted, as before: a delay counts from here.
        let options: Vec<CallOptions> = sources
            .into_iter()
            .map(CallOptions::read)
            .collect::<PyResult<_>>()?;
        let mut tasks = Vec::with_capacity(read.len());
        for call in &read {
            let o = &options[call.options];
            tasks.push(NewTask {
                name: Cow::Borrowed(utf8("task name", &call.name)?),
                resource_group: Cow::Borrowed(utf8("resource_group", &o.resource_group)?),
                payload: Cow::Borrowed(call.payload.as_bytes()),
                priority: o.priority,
                run_at: o.run_at,
                max_attempts: o.max_attempts,
                unique_key: o
                    .unique_key
                    .as_ref()
                    .map(|k| utf8("unique_key", k))
                    .transpose()?
                    .map(Cow::Borrowed),
                cache_ttl: o.cache_ttl,
            });
        }
        let done = py.detach(|| self.store.enqueue(queue, &tasks))?;
        PyList::new(py, done.iter().map(|e| e.id))
    }

    /// Leases up to `limit` ready tasks to `worker`: a list of `ClaimedTask`.
    fn claim<'py>(
        &self,
        py: Python<'py>,
        queue: &str,
        worker: &str,
        limit: usize,
        lease_ms: Millis,
    ) -> PyResult<Bound<'py, PyList>> {
        let claimed = py.detach(|| self.store.claim(queue, worker, limit, lease_ms))?;
        claimed_list(py, claimed)
    }

    fn complete(&self, py: Python<'_>, id: i64, token: i64, result: &[u8]) -> PyResult<()> {
        Ok(py.detach(|| self.store.complete(id, token, result))?)
    }

    /// `retry_delay_ms=None` means dead now; returns the new status name.
    #[pyo3(signature = (id, token, error, retry_delay_ms))]
    fn fail(
        &self,
        py: Python<'_>,
        id: i64,
        token: i64,
        error: &str,
        retry_delay_ms: Option<Millis>,
    ) -> PyResult<&'static str> {
        let action = match retry_delay_ms {
            Some(delay_ms) => FailAction::Retry { delay_ms },
            None => FailAction::Dead,
        };
        Ok(py
            .detach(|| self.store.fail(id, token, error, action))?
            .as_str())
    }

    /// Records `outcomes` in one transaction, each fenced by its own lease token. Returns
    /// per outcome the new status, or None if the lease was lost.
    fn finish_many(
        &self,
        py: Python<'_>,
        outcomes: PyRef<'_, PyOutcomes>,
    ) -> PyResult<Vec<Option<&'static str>>> {
        let outcomes = &outcomes.outcomes;
        let answers = py.detach(|| self.store.finish_many(outcomes))?;
        answers
            .into_iter()
            .map(|answer| match answer {
                Ok(status) => Ok(Some(status.as_str())),
                Err(crate::Error::LeaseLost(_)) => Ok(None),
                Err(other) => Err(other.into()),
            })
            .collect()
    }

    fn heartbeat(
        &self,
        py: Python<'_>,
        leases: Vec<(i64, i64)>,
        lease_ms: Millis,
    ) -> PyResult<Vec<bool>> {
        Ok(py.detach(|| self.store.heartbeat(&leases, lease_ms))?)
    }

    #[pyo3(signature = (id, token, progress, message=None))]
    fn progress(
        &self,
        py: Python<'_>,
        id: i64,
        token: i64,
        progress: f64,
        message: Option<&str>,
    ) -> PyResult<()> {
        Ok(py.detach(|| self.store.progress(id, token, progress, message))?)
    }

    fn release(&self, py: Python<'_>, id: i64, token: i64) -> PyResult<()> {
        Ok(py.detach(|| self.store.release(id, token))?)
    }

    /// Gives back `(id, token, error json)` claims this worker has no processor for (see
    /// `Store::defer`). Per task `(status, deferrals in a row, run_at ms)`, or None if the
    /// lease was lost.
    fn defer(
        &self,
        py: Python<'_>,
        tasks: Vec<(i64, i64, String)>,
        grace_ms: Millis,
    ) -> PyResult<Vec<Option<DeferralTuple>>> {
        let tasks: Vec<Unrunnable<'_>> = tasks
            .iter()
            .map(|(id, token, error)| Unrunnable {
                id: *id,
                token: *token,
                error,
            })
            .collect();
        let answers = py.detach(|| self.store.defer(&tasks, grace_ms))?;
        answers
            .into_iter()
            .map(|answer| match answer {
                Ok(d) => Ok(Some((d.status.as_str(), d.deferrals, d.run_at))),
                Err(crate::Error::LeaseLost(_)) => Ok(None),
                Err(other) => Err(other.into()),
            })
            .collect()
    }

    fn rescue(&self, py: Python<'_>, queue: &str) -> PyResult<Vec<(i64, &'static str)>> {
        let rescued = py.detach(|| self.store.rescue_expired(queue))?;
        Ok(rescued
            .into_iter()
            .map(|(id, s)| (id, s.as_str()))
            .collect())
    }

    fn get<'py>(&self, py: Python<'py>, queue: &str, id: i64) -> PyResult<Bound<'py, PyDict>> {
        let t = py.detach(|| self.store.get(queue, id))?;
        super::listing::task_dict(py, t)
    }

    fn cancel(&self, py: Python<'_>, queue: &str, id: i64) -> PyResult<()> {
        Ok(py.detach(|| self.store.cancel(queue, id))?)
    }

    fn requeue(&self, py: Python<'_>, queue: &str, id: i64) -> PyResult<()> {
        Ok(py.detach(|| self.store.requeue(queue, id))?)
    }

    /// Tuples (from | None, to, at_ms, worker | None, error | None).
    #[allow(clippy::type_complexity)]
    fn history(
        &self,
        py: Python<'_>,
        queue: &str,
        id: i64,
    ) -> PyResult<
        Vec<(
            Option<&'static str>,
            &'static str,
            Millis,
            Option<String>,
            Option<String>,
        )>,
    > {
        let rows = py.detach(|| self.store.history(queue, id))?;
        Ok(rows
            .into_iter()
            .map(|t| {
                (
                    t.from.map(TaskStatus::as_str),
                    t.to.as_str(),
                    t.at,
                    t.worker,
                    t.error,
                )
            })
            .collect())
    }

    fn counts(&self, py: Python<'_>, queue: &str) -> PyResult<Vec<(&'static str, u64)>> {
        let counts = py.detach(|| self.store.counts(queue))?;
        Ok(counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect())
    }

    #[pyo3(signature = (queue, completed_age_ms=None, completed_count=None, dead_age_ms=None, dead_count=None))]
    fn prune(
        &self,
        py: Python<'_>,
        queue: &str,
        completed_age_ms: Option<Millis>,
        completed_count: Option<u64>,
        dead_age_ms: Option<Millis>,
        dead_count: Option<u64>,
    ) -> PyResult<u64> {
        let retention = Retention {
            completed: Keep {
                max_age_ms: completed_age_ms,
                max_count: completed_count,
            },
            dead: Keep {
                max_age_ms: dead_age_ms,
                max_count: dead_count,
            },
        };
        Ok(py.detach(|| self.store.prune(queue, &retention))?)
    }

    fn next_run_at(&self, py: Python<'_>, queue: &str) -> PyResult<Option<Millis>> {
        Ok(py.detach(|| self.store.next_run_at(queue))?)
    }

    fn pragmas(&self, py: Python<'_>) -> PyResult<Vec<(String, String)>> {
        Ok(py.detach(|| self.store.settings())?)
    }

    fn schema_versions(&self, py: Python<'_>) -> PyResult<Vec<i64>> {
        Ok(py.detach(|| self.store.schema_versions())?)
    }

    fn quick_check(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(py.detach(|| self.store.integrity_check())?)
    }
}

/// The text of `value`, or `InvalidArgument` naming `what` when it cannot be UTF-8 (a lone
/// surrogate: `"\ud800"`). `TaskCall`s built by hand reach here unchecked by `ferroq._checks`.
pub(super) fn utf8<'a>(what: &str, value: &'a Bound<'_, PyString>) -> PyResult<&'a str> {
    value.to_str().map_err(|_| {
        InvalidArgument::new_err(format!(
            "{what} {} is not valid Unicode: it holds a lone surrogate",
            value.repr().map_or_else(|_| "?".into(), |r| r.to_string())
        ))
    })
}

/// Claimed tasks as `ClaimedTask`s. Rows of a claim share their token and mostly their
/// name and group: each is made once per run of equal values, not once per row (the worker
/// converts thousands of rows a second while holding the GIL; an equal str object also
/// hashes for free in its dict lookups).
pub(super) fn claimed_list(
    py: Python<'_>,
    claimed: Vec<ClaimedTask>,
) -> PyResult<Bound<'_, PyList>> {
    let mut token: Option<(i64, Bound<'_, PyInt>)> = None;
    let mut name: Option<(String, Bound<'_, PyString>)> = None;
    let mut group: Option<(String, Bound<'_, PyString>)> = None;
    let mut rows = Vec::with_capacity(claimed.len());
    for t in claimed {
        let int = |v: i64| v.into_pyobject(py).map(|i| i.unbind());
        let row = PyClaimedTask {
            id: int(t.id)?,
            token: reuse(&mut token, t.token, |v| Ok(v.into_pyobject(py)?))?.unbind(),
            name: reuse(&mut name, t.name, |v| Ok(PyString::new(py, &v)))?.unbind(),
            group: reuse(&mut group, t.resource_group, |v| Ok(PyString::new(py, &v)))?.unbind(),
            payload: PyBytes::new(py, &t.payload).unbind(),
            priority: int(t.priority)?,
            attempt: int(t.attempt)?,
            max_attempts: int(t.max_attempts)?,
            created_at_ms: int(t.created_at)?,
        };
        rows.push(Bound::new(py, row)?);
    }
    PyList::new(py, rows)
}

/// The Python object for `value`: the previous one if `value` equals the previous value.
fn reuse<'py, T: PartialEq + Clone, O>(
    previous: &mut Option<(T, Bound<'py, O>)>,
    value: T,
    make: impl FnOnce(T) -> PyResult<Bound<'py, O>>,
) -> PyResult<Bound<'py, O>> {
    if let Some((last, object)) = previous
        && *last == value
    {
        return Ok(object.clone());
    }
    let object = make(value.clone())?;
    *previous = Some((value, object.clone()));
    Ok(object)
}
