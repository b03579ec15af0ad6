//! How long a task no running worker has a processor for is given back before it is
//! offered again: 1 s, doubling with each deferral in a row, at most 5 minutes.

use crate::clock::Millis;

/// The delay after a task's first deferral; it doubles with each one after, up to the max.
pub const FIRST_DELAY_MS: Millis = 1_000;
pub const MAX_DELAY_MS: Millis = 300_000;

/// The delay after the `n`th deferral in a row (1-based).
pub fn delay_ms(n: i64) -> Millis {
    let doublings = u32::try_from((n - 1).clamp(0, 20)).unwrap_or(20);
    (FIRST_DELAY_MS << doublings).min(MAX_DELAY_MS)
}
