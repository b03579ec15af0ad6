//! Policies the core enforces: pure functions here, persisted state beside the store.

pub mod backoff;
pub mod breaker;
pub mod deferral;
pub mod retention;
pub mod throttle;
