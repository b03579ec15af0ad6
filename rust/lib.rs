//! ferroq core: durable task storage and scheduling on SQLite.
//!
//! Everything but `py` builds without Python, so `cargo test` needs no interpreter.

pub mod clock;
pub mod error;
pub mod json;
pub mod metrics;
pub mod policy;
pub mod resource_group;
pub mod run_journal;
pub mod store;
pub mod task;
pub mod validate;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};
