//! `ferroq._core.RunJournal`: a worker's run journal (see `run_journal`). Called once per run
//! on the hot path: no GIL release (a few stores to memory cost less than giving it up).

use pyo3::prelude::*;

use super::queue::PyStore;
use crate::run_journal::{JournalView, RunJournal};

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

    /// Notes that task `id` (lease `token`) is handed to a child process, which notes its
    /// start (`RunJournalView`); returns the slot, or -1 if the journal is full.
    fn handed(&self, id: i64, token: i64) -> i64 {
        self.journal.handed(id, token).map_or(-1, i64::from)
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

/// A worker's run journal as its child processes write it (`pool="process"`).
#[pyclass(name = "RunJournalView", module = "ferroq._core", frozen)]
pub struct PyRunJournalView {
    view: JournalView,
}

#[pymethods]
impl PyRunJournalView {
    #[new]
    fn new(path: &str) -> PyResult<Self> {
        let view = JournalView::attach(std::path::Path::new(path))?;
        Ok(Self { view })
    }

    /// The processor of the run handed in `slot` (task `id`) is about to be called.
    fn started(&self, slot: i64, id: i64) {
        if let Ok(slot) = u32::try_from(slot) {
            self.view.started(slot, id);
        }
    }

    /// The processor of the run in `slot` (task `id`) returned.
    fn returned(&self, slot: i64, id: i64) {
        if let Ok(slot) = u32::try_from(slot) {
            self.view.returned(slot, id);
        }
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
