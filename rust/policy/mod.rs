//! Policies the core enforces: pure functions here, persisted state beside the store.

pub mod backoff;
pub mod retention;
