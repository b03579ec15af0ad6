//! Metrics: duration histograms and counters per queue and resource group, recorded by the
//! store as it commits, aggregated per interval into the `metrics` table.

pub mod histogram;
pub mod recorder;

/// The finest resolution of the stored metrics: one row per counter and interval.
pub const INTERVAL_MS: crate::clock::Millis = 10_000;

pub use histogram::Histogram;
pub use recorder::{Counter, Recorder, Series, SeriesMap};

/// `Store::named_metrics` rows merged across groups, by name (a task routed to another
/// group keeps one history of its run times).
pub fn merge_by_name(
    rows: Vec<(String, String, Histogram)>,
) -> std::collections::BTreeMap<String, Histogram> {
    let mut out = std::collections::BTreeMap::<String, Histogram>::new();
    for (_, name, h) in rows {
        out.entry(name).or_default().merge(&h);
    }
    out
}
