//! Metrics: duration histograms and counters per queue and resource group, recorded by the
//! store as it commits, aggregated per interval into the `metrics` table.

pub mod histogram;
pub mod recorder;

/// The finest resolution of the stored metrics: one row per counter and interval.
pub const INTERVAL_MS: crate::clock::Millis = 10_000;

pub use histogram::Histogram;
pub use recorder::{Counter, Recorder, Series, SeriesMap};
