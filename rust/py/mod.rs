//! The Python binding: the only module that imports pyo3. It converts, nothing more.

mod boundary;
mod errors;
mod groups;
mod journal;
mod listing;
mod migration;
mod observe;
mod queue;
mod schedules;

use pyo3::prelude::*;

use crate::policy::backoff::Backoff;
use crate::validate;

/// Delay in milliseconds before retrying after the `attempt`-th failed run.
#[pyfunction]
fn backoff_delay_ms(base: f64, max: f64, jitter: f64, attempt: i64) -> i64 {
    Backoff { base, max, jitter }.sample_ms(attempt)
}

/// Raises `InvalidArgument` unless `value` is a valid task, queue or group name.
#[pyfunction]
fn check_name(kind: &str, value: &str) -> PyResult<()> {
    Ok(validate::name(kind, value)?)
}

/// Raises `InvalidArgument` unless `value` is within the priority range.
#[pyfunction]
fn check_priority(value: i64) -> PyResult<()> {
    Ok(validate::priority(value)?)
}

/// Raises `InvalidArgument` unless `value` is a valid max_attempts.
#[pyfunction]
fn check_max_attempts(value: i64) -> PyResult<()> {
    Ok(validate::max_attempts(value)?)
}

/// Just before `fork()`: waits (GIL released: a close may log) for stores closing on their
/// own threads, and holds new closes until `release_closes` (see `store::sqlite::closing`).
#[pyfunction]
fn hold_closes(py: Python<'_>) {
    py.detach(crate::store::sqlite::hold_closes)
}

/// Right after `fork()`, in the parent and in the child.
#[pyfunction]
fn release_closes() {
    crate::store::sqlite::release_closes()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Rust-side log records (breaker transitions, migrations) go to Python loggers named
    // after their module under "ferroq." (`ferroq._core.store.sqlite.open`), so the
    // "ferroq" logger governs them with the rest. A second import of the module
    // (subinterpreters, reloads) keeps the first logger: install fails, harmlessly.
    let logger = pyo3_log::Logger::new(m.py(), pyo3_log::Caching::LoggersAndLevels)?;
    let _ = logger.set_prefix("ferroq").install();
    m.add_class::<queue::PyStore>()?;
    m.add_class::<boundary::PyNewTask>()?;
    m.add_class::<boundary::PyClaimedTask>()?;
    m.add_class::<boundary::PyOutcomes>()?;
    m.add_class::<migration::PyFinishedTask>()?;
    m.add_class::<queue::PyManualClock>()?;
    m.add_class::<journal::PyRunJournal>()?;
    m.add_class::<journal::PyRunJournalView>()?;
    m.add_function(wrap_pyfunction!(hold_closes, m)?)?;
    m.add_function(wrap_pyfunction!(release_closes, m)?)?;
    m.add_function(wrap_pyfunction!(backoff_delay_ms, m)?)?;
    m.add_function(wrap_pyfunction!(check_name, m)?)?;
    m.add_function(wrap_pyfunction!(check_priority, m)?)?;
    m.add_function(wrap_pyfunction!(check_max_attempts, m)?)?;
    m.add("PRIORITY_MIN", validate::PRIORITY_MIN)?;
    m.add("PRIORITY_MAX", validate::PRIORITY_MAX)?;
    m.add("NAME_MAX_LEN", validate::NAME_MAX_LEN)?;
    m.add("DEFAULT_MAX_PAYLOAD", validate::DEFAULT_MAX_PAYLOAD)?;
    m.add(
        "SCHEMA_VERSION",
        crate::store::sqlite::migrations::latest_version(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
