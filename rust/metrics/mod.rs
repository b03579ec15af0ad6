//! Metrics: duration histograms and counters per queue and resource group, recorded by the
//! store as it commits, aggregated per interval into the `metrics` table.

pub mod histogram;
pub mod recorder;

pub use histogram::Histogram;
pub use recorder::{Counter, Recorder, Series, SeriesMap};
