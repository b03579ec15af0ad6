//! Finished tasks read from one store and written to another (`ferroq migrate --history`):
//! the records stay in Rust between the two calls; Python only sees what it decides on.

use pyo3::prelude::*;

use super::queue::PyStore;
use crate::clock::Millis;
use crate::store::import::FinishedTask;
use crate::task::{TaskId, TaskRecord, TaskStatus};

/// A finished task with its history, as `export_finished` reads it.
#[pyclass(name = "FinishedTask", module = "ferroq._core", frozen)]
pub struct PyFinishedTask {
    task: FinishedTask,
}

#[pymethods]
impl PyFinishedTask {
    /// A cancelled task that never ran, stored as given: a migration's checkpoint, written
    /// in the same transaction as the batch it follows.
    #[staticmethod]
    fn checkpoint(name: String, payload: Vec<u8>, unique_key: String, at_ms: Millis) -> Self {
        let record = TaskRecord {
            id: 0,
            queue: String::new(),
            name,
            status: TaskStatus::Cancelled,
            priority: 0,
            resource_group: "default".into(),
            payload,
            attempts: 0,
            max_attempts: 1,
            run_at: at_ms,
            unique_key: Some(unique_key),
            progress: None,
            progress_message: None,
            lease_owner: None,
            lease_expires_at: None,
            last_error: None,
            result: None,
            created_at: at_ms,
            updated_at: at_ms,
            started_at: None,
            finished_at: Some(at_ms),
            corrupt: None,
        };
        Self {
            task: FinishedTask {
                record,
                history: Vec::new(),
            },
        }
    }

    /// The id in the store it was read from.
    #[getter]
    fn id(&self) -> TaskId {
        self.task.record.id
    }

    #[getter]
    fn name(&self) -> &str {
        &self.task.record.name
    }

    #[getter]
    fn status(&self) -> &'static str {
        self.task.record.status.as_str()
    }

    /// Which column holds a damaged value (a row edited by hand), or None.
    #[getter]
    fn corrupt(&self) -> Option<&str> {
        self.task.record.corrupt.as_ref().map(|c| c.column)
    }

    fn __repr__(&self) -> String {
        format!(
            "FinishedTask(id={}, name={:?}, status={})",
            self.task.record.id,
            self.task.record.name,
            self.task.record.status.as_str()
        )
    }
}

#[pymethods]
impl PyStore {
    /// Up to `limit` finished tasks of `queue` with ids in (`after`, `until`], with their
    /// histories, in id order.
    fn export_finished(
        &self,
        py: Python<'_>,
        queue: &str,
        after: TaskId,
        until: TaskId,
        limit: usize,
    ) -> PyResult<Vec<PyFinishedTask>> {
        let tasks = py.detach(|| self.store.export_finished(queue, after, until, limit))?;
        Ok(tasks
            .into_iter()
            .map(|task| PyFinishedTask { task })
            .collect())
    }

    /// Stores `tasks` (finished, from another store) in one transaction; their new ids.
    fn import_finished(
        &self,
        py: Python<'_>,
        queue: &str,
        tasks: Vec<Bound<'_, PyFinishedTask>>,
    ) -> PyResult<Vec<TaskId>> {
        let tasks: Vec<FinishedTask> = tasks.iter().map(|t| t.get().task.clone()).collect();
        Ok(py.detach(|| self.store.import_finished(queue, &tasks))?)
    }
}
