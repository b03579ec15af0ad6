//! `Store` methods for periodic tasks (see `store::Operations::enqueue_tick`).

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::boundary::PyNewTask;
use super::queue::PyStore;
use crate::clock::Millis;
use crate::store::operations::Schedule;

fn schedule_dict(py: Python<'_>, s: Schedule) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", s.name)?;
    d.set_item("task", s.task)?;
    d.set_item("cron", s.cron)?;
    d.set_item("tz", s.tz)?;
    d.set_item("missed", s.missed)?;
    d.set_item("declared_at", s.declared_at)?;
    d.set_item("last_tick", s.last_tick)?;
    d.set_item("last_task_id", s.last_task_id)?;
    d.set_item("seen_at", s.seen_at)?;
    Ok(d)
}

#[pymethods]
impl PyStore {
    /// Records or renews a schedule; returns it as stored (a dict).
    #[allow(clippy::too_many_arguments)]
    fn declare_schedule<'py>(
        &self,
        py: Python<'py>,
        queue: &str,
        name: String,
        task: String,
        cron: String,
        tz: String,
        missed: String,
        now_ms: Millis,
    ) -> PyResult<Bound<'py, PyDict>> {
        let s = Schedule {
            name,
            task,
            cron,
            tz,
            missed,
            ..Schedule::default()
        };
        let stored = py.detach(|| self.store.declare_schedule(queue, &s, now_ms))?;
        schedule_dict(py, stored)
    }

    /// Enqueues the task of tick `tick_ms` unless that tick or a later one was; returns
    /// (id, created), or None.
    fn enqueue_tick(
        &self,
        py: Python<'_>,
        queue: &str,
        name: &str,
        tick_ms: Millis,
        task: Bound<'_, PyNewTask>,
    ) -> PyResult<Option<(i64, bool)>> {
        let task = task.get().core(py)?;
        let done = py.detach(|| self.store.enqueue_tick(queue, name, tick_ms, &task))?;
        Ok(done.map(|e| (e.id, e.created)))
    }

    /// The schedules declared on `queue` (dicts), by name.
    fn schedules<'py>(&self, py: Python<'py>, queue: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let all = py.detach(|| self.store.schedules(queue))?;
        all.into_iter().map(|s| schedule_dict(py, s)).collect()
    }
}
