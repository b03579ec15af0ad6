//! `ferroq._core.RunJournal`: a worker's run journal (see `run_journal`). Called once per run
//! on the hot path: no GIL release (a few stores to memory cost less than giving it up).

use pyo3::prelude::*;

use super::queue::PyStore;
use crate::run_journal::RunJournal;

#[pyclass(name = "RunJournal", module = "ferroq._core", frozen)]
pub struct PyRunJournal {
    journal: RunJournal,
}

#[pymethods]
impl PyRunJournal {
    /// Notes that task `id`'s processor (lease `token`) is about to be called; returns the
    /// slot to pass to `returned` and `forget`, or -1 if the journal is full.
    fn started(&self, id: i64, token: i64) -> i64 {
        self.journal.started(id, token).map_or(-1, i64::from)
    }

    /// Notes that the run in `slot` (task `id`) returned; a slot of -1, or one freed and
    /// taken by another run meanwhile (a run that timed out), is left alone.
    fn returned(&self, slot: i64, id: i64) {
        if let Ok(slot) = u32::try_from(slot) {
            self.journal.returned(slot, id);
        }
    }

    /// Frees the slots of runs whose outcome is committed or that were given back (-1s are
    /// skipped). Each slot is freed once, by whichever settled its run.
    fn forget(&self, slots: Vec<i64>) {
        self.journal
            .forget(slots.into_iter().filter_map(|s| u32::try_from(s).ok()));
    }

    /// The journal's file.
    #[getter]
    fn path(&self) -> String {
        self.journal.path().display().to_string()
    }
}

#[pymethods]
impl PyStore {
    /// Opens the run journal of `worker`, with room for `capacity` runs in flight.
    fn run_journal(&self, py: Python<'_>, worker: &str, capacity: usize) -> PyResult<PyRunJournal> {
        let journal = py.detach(|| self.store.run_journal(worker, capacity))?;
        Ok(PyRunJournal { journal })
    }

    /// How far this store's clock runs ahead of the wall clock (ms) after a backward step.
    fn clock_lead_ms(&self) -> i64 {
        self.store.clock_lead_ms()
    }
}
