//! Exponential backoff with a cap and symmetric jitter.

use crate::clock::Millis;

/// How long to wait before each retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry, in seconds.
    pub base: f64,
    /// Cap on the exponential part, in seconds.
    pub max: f64,
    /// Fraction of the delay added or removed at random (0.1 = ±10%).
    pub jitter: f64,
}

impl Backoff {
    /// The delay after the `attempt`-th failed run (1-based): `min(base * 2^(attempt-1), max)`,
    /// scaled by `1 + jitter * unit`, where `unit` is drawn uniformly from [-1, 1].
    pub fn delay_ms(&self, attempt: i64, unit: f64) -> Millis {
        let exponent = (attempt.max(1) - 1).min(62) as i32;
        let raw = (self.base * 2f64.powi(exponent)).min(self.max);
        let jittered = raw * (1.0 + self.jitter * unit.clamp(-1.0, 1.0));
        (jittered.max(0.0) * 1000.0).round() as Millis
    }

    /// `delay_ms` with a fresh random draw.
    pub fn sample_ms(&self, attempt: i64) -> Millis {
        self.delay_ms(attempt, fastrand::f64() * 2.0 - 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Backoff = Backoff {
        base: 1.0,
        max: 60.0,
        jitter: 0.1,
    };

    #[test]
    fn doubles_from_base() {
        assert_eq!(POLICY.delay_ms(1, 0.0), 1000);
        assert_eq!(POLICY.delay_ms(2, 0.0), 2000);
        assert_eq!(POLICY.delay_ms(3, 0.0), 4000);
        assert_eq!(POLICY.delay_ms(6, 0.0), 32000);
    }

    #[test]
    fn caps_at_max_and_never_overflows() {
        assert_eq!(POLICY.delay_ms(7, 0.0), 60000);
        assert_eq!(POLICY.delay_ms(10_000, 0.0), 60000);
    }

    #[test]
    fn jitter_is_bounded() {
        assert_eq!(POLICY.delay_ms(1, 1.0), 1100);
        assert_eq!(POLICY.delay_ms(1, -1.0), 900);
        for _ in 0..1000 {
            let d = POLICY.sample_ms(3);
            assert!((3600..=4400).contains(&d), "{d}");
        }
    }
}
