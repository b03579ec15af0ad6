//! `Store` methods for operators and dedicated workers (see `store::Operations`): listings,
//! bulk purge and requeue one batch per call, claims restricted to groups.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use super::queue::{PyStore, claimed_list};
use crate::clock::Millis;

use crate::store::operations::{
    CancelCursor, Cursor, Finished, Page, PendingTasks, Step, TaskFilter,
};
use crate::task::{TaskRecord, TaskStatus};

/// (done, skipped ids, next cursor | None)
type StepTuple = (u64, Vec<i64>, Option<Cursor>);

/// A stored task as the dict `ferroq.info.TaskInfo.from_core` reads.
pub(super) fn task_dict(py: Python<'_>, t: TaskRecord) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", t.id)?;
    d.set_item("queue", t.queue)?;
    d.set_item("name", t.name)?;
    d.set_item("status", t.status.as_str())?;
    d.set_item("priority", t.priority)?;
    d.set_item("resource_group", t.resource_group)?;
    d.set_item("payload", PyBytes::new(py, &t.payload))?;
    d.set_item("attempts", t.attempts)?;
    d.set_item("max_attempts", t.max_attempts)?;
    d.set_item("run_at", t.run_at)?;
    d.set_item("unique_key", t.unique_key)?;
    d.set_item("progress", t.progress)?;
    d.set_item("progress_message", t.progress_message)?;
    d.set_item("lease_owner", t.lease_owner)?;
    d.set_item("lease_expires_at", t.lease_expires_at)?;
    d.set_item("last_error", t.last_error)?;
    d.set_item("result", t.result.map(|r| PyBytes::new(py, &r)))?;
    d.set_item("created_at", t.created_at)?;
    d.set_item("updated_at", t.updated_at)?;
    d.set_item("started_at", t.started_at)?;
    d.set_item("finished_at", t.finished_at)?;
    // (column, problem, raw bytes) of a value of the wrong type; None for a sound row.
    let corrupt = t
        .corrupt
        .map(|c| (c.column, c.problem, PyBytes::new(py, &c.raw)));
    d.set_item("corrupt", corrupt)?;
    Ok(d)
}

fn finished(
    status: &str,
    finished_before: Option<Millis>,
    group: Option<String>,
    name: Option<String>,
) -> PyResult<Finished> {
    Ok(Finished {
        status: TaskStatus::parse(status)?,
        finished_before,
        group,
        name,
    })
}

fn step_tuple(step: Step) -> StepTuple {
    (step.done, step.skipped, step.next)
}

#[pymethods]
impl PyStore {
    /// One page of tasks (dicts like `get`), by id after `after` (descending if `newest_first`).
    #[pyo3(signature = (queue, statuses, group, name, after, newest_first, limit, until=None))]
    #[allow(clippy::too_many_arguments)]
    fn list_tasks<'py>(
        &self,
        py: Python<'py>,
        queue: &str,
        statuses: Vec<String>,
        group: Option<String>,
        name: Option<String>,
        after: Option<i64>,
        newest_first: bool,
        limit: usize,
        until: Option<i64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let filter = TaskFilter {
            statuses: statuses
                .iter()
                .map(|s| TaskStatus::parse(s))
                .collect::<Result<_, _>>()?,
            group,
            name,
        };
        let page = Page {
            after,
            newest_first,
            limit,
            until,
        };
        let rows = py.detach(|| self.store.list(queue, &filter, page))?;
        let dicts = rows
            .into_iter()
            .map(|t| task_dict(py, t))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, dicts)
    }

    #[pyo3(signature = (queue, status, finished_before, group, name))]
    fn count_finished(
        &self,
        py: Python<'_>,
        queue: &str,
        status: &str,
        finished_before: Option<Millis>,
        group: Option<String>,
        name: Option<String>,
    ) -> PyResult<u64> {
        let which = finished(status, finished_before, group, name)?;
        Ok(py.detach(|| self.store.count_finished(queue, &which))?)
    }

    #[pyo3(signature = (queue, status, finished_before, group, name, after, limit))]
    #[allow(clippy::too_many_arguments)]
    fn purge_batch(
        &self,
        py: Python<'_>,
        queue: &str,
        status: &str,
        finished_before: Option<Millis>,
        group: Option<String>,
        name: Option<String>,
        after: Option<Cursor>,
        limit: usize,
    ) -> PyResult<StepTuple> {
        let which = finished(status, finished_before, group, name)?;
        let step = py.detach(|| self.store.purge_batch(queue, &which, after, limit))?;
        Ok(step_tuple(step))
    }

    #[pyo3(signature = (queue, status, finished_before, group, name, after, limit))]
    #[allow(clippy::too_many_arguments)]
    fn requeue_batch(
        &self,
        py: Python<'_>,
        queue: &str,
        status: &str,
        finished_before: Option<Millis>,
        group: Option<String>,
        name: Option<String>,
        after: Option<Cursor>,
        limit: usize,
    ) -> PyResult<StepTuple> {
        let which = finished(status, finished_before, group, name)?;
        let step = py.detach(|| self.store.requeue_batch(queue, &which, after, limit))?;
        Ok(step_tuple(step))
    }

    /// Pending tasks (ready or delayed) matching.
    fn count_pending(
        &self,
        py: Python<'_>,
        queue: &str,
        group: Option<String>,
        name: Option<String>,
    ) -> PyResult<u64> {
        let which = PendingTasks { group, name };
        Ok(py.detach(|| self.store.count_pending(queue, &which))?)
    }

    /// Cancels one batch of matching pending tasks: (cancelled, next cursor | None); the
    /// cursor is (last id passed, newest id taken).
    #[pyo3(signature = (queue, group, name, at, limit))]
    fn cancel_batch(
        &self,
        py: Python<'_>,
        queue: &str,
        group: Option<String>,
        name: Option<String>,
        at: Option<(i64, i64)>,
        limit: usize,
    ) -> PyResult<(u64, Option<(i64, i64)>)> {
        let which = PendingTasks { group, name };
        let at = at.map(|(after, through)| CancelCursor { after, through });
        let step = py.detach(|| self.store.cancel_batch(queue, &which, at, limit))?;
        Ok((step.done, step.next.map(|c| (c.after, c.through))))
    }

    /// `claim`, from these groups' tasks only.
    fn claim_in_groups<'py>(
        &self,
        py: Python<'py>,
        queue: &str,
        groups: Vec<String>,
        worker: &str,
        limit: usize,
        lease_ms: Millis,
    ) -> PyResult<Bound<'py, PyList>> {
        let claimed = py.detach(|| {
            self.store
                .claim_in_groups(queue, &groups, worker, limit, lease_ms)
        })?;
        claimed_list(py, claimed)
    }

    fn queue_names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(py.detach(|| self.store.queue_names())?)
    }

    fn task_names_like(&self, py: Python<'_>, queue: &str, name: &str) -> PyResult<Vec<String>> {
        Ok(py.detach(|| self.store.task_names_like(queue, name))?)
    }

    /// Ends the cache entries of task `name` (one key, or all); returns how many.
    #[pyo3(signature = (queue, name, key=None))]
    fn clear_cache(
        &self,
        py: Python<'_>,
        queue: &str,
        name: &str,
        key: Option<&str>,
    ) -> PyResult<u64> {
        Ok(py.detach(|| self.store.clear_cache(queue, name, key))?)
    }
}
