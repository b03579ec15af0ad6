//! A log-linear histogram of durations (HDR-style): 16 sub-buckets per power of two of
//! microseconds, so any quantile is within about 3% of the true value, from 1 µs to about
//! 35 minutes (slower runs land in the top bucket), in at most 512 counters. Cheap enough to
//! leave on: recording is a few integer operations; merging is adding counters.

const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
const MAGNITUDES: usize = 32;
/// Number of buckets.
pub const BUCKETS: usize = MAGNITUDES * SUB;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum_us: u128,
    max_us: u64,
}

fn index_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let magnitude = 63 - us.leading_zeros(); // >= SUB_BITS
    let shift = magnitude - SUB_BITS;
    let sub = ((us >> shift) as usize) & (SUB - 1);
    let i = ((magnitude - SUB_BITS + 1) as usize) * SUB + sub;
    i.min(BUCKETS - 1)
}

/// The smallest value that lands in bucket `i` and the width of the bucket.
fn bucket_range(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, 1);
    }
    let magnitude = (i / SUB) as u32 - 1 + SUB_BITS;
    let shift = magnitude - SUB_BITS;
    let low = ((SUB + i % SUB) as u64) << shift;
    (low, 1u64 << shift)
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one duration in microseconds.
    pub fn record(&mut self, us: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        self.counts[index_of(us)] += 1;
        self.total += 1;
        self.sum_us += u128::from(us);
        self.max_us = self.max_us.max(us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us.min(u128::from(u64::MAX)) as u64
    }

    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    pub fn mean_us(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.total as f64
        }
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Adds `other`'s counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// Takes `other`'s counts out again (undoes `merge`; the max stays).
    pub fn unmerge(&mut self, other: &Histogram) {
        if other.total == 0 || self.counts.is_empty() {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_sub(*b);
        }
        self.total = self.total.saturating_sub(other.total);
        self.sum_us = self.sum_us.saturating_sub(other.sum_us);
    }

    /// The value at quantile `q` (0..=1) in microseconds: the middle of the bucket holding
    /// the q-th value, never above the largest value recorded.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bucket_range(i);
                return (low + width / 2).min(self.max_us);
            }
        }
        self.max_us
    }

    /// How many values are at most `us` (for Prometheus' cumulative `le` buckets): whole
    /// buckets up to the one holding `us`, so a bound inside a bucket counts all of it.
    pub fn count_at_most(&self, us: u64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let last = index_of(us);
        self.counts[..=last].iter().sum()
    }

    /// A compact encoding for the metrics table: total, sum, max, then (index, count) pairs
    /// for the non-empty buckets, as little-endian integers.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 10 * 16);
        out.extend_from_slice(&self.total.to_le_bytes());
        out.extend_from_slice(&(self.sum_us as u64).to_le_bytes());
        out.extend_from_slice(&self.max_us.to_le_bytes());
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                out.extend_from_slice(&(i as u16).to_le_bytes());
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
        out
    }

    /// Decodes `to_bytes`; `None` if the bytes are not a histogram.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < 24 || !(bytes.len() - 24).is_multiple_of(10) {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let mut h = Histogram {
            counts: vec![0; BUCKETS],
            total: u64_at(0),
            sum_us: u128::from(u64_at(8)),
            max_us: u64_at(16),
        };
        let mut at = 24;
        let mut total = 0;
        while at < bytes.len() {
            let i = u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
            let c = u64_at(at + 2);
            *h.counts.get_mut(i)? += c;
            total += c;
            at += 10;
        }
        (total == h.total).then_some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for us in [0u64, 1, 15, 16, 17, 31, 32, 1000, 1_000_000, u64::MAX] {
            let i = index_of(us);
            assert!(i >= last, "{us}");
            last = i;
            let (low, width) = bucket_range(i);
            if i < BUCKETS - 1 {
                assert!(low <= us && us < low + width, "{us} in [{low}, +{width})");
            }
        }
    }

    #[test]
    fn quantiles_are_within_a_few_percent() {
        let mut h = Histogram::new();
        for us in 1..=100_000u64 {
            h.record(us);
        }
        for (q, exact) in [(0.5, 50_000.0), (0.95, 95_000.0), (0.99, 99_000.0)] {
            let got = h.quantile_us(q) as f64;
            assert!(
                (got - exact).abs() / exact < 0.035,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.count(), 100_000);
        assert_eq!(h.max_us(), 100_000);
        assert!((h.mean_us() - 50_000.5).abs() < 1.0);
    }

    #[test]
    fn merges_and_round_trips() {
        let (mut a, mut b) = (Histogram::new(), Histogram::new());
        a.record(10);
        b.record(5_000);
        b.record(7);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        let back = Histogram::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.count_at_most(10), 2);
        assert!(Histogram::from_bytes(b"junk").is_none());
        assert_eq!(Histogram::new().quantile_us(0.5), 0);
    }
}
