//! A resource group's throttle: a token bucket for the rate, a cap on running tasks, and
//! the AIMD rule that moves the cap in adaptive mode. Pure functions; state is persisted
//! by the store.

use crate::clock::Millis;

/// A throttle's settings (Python: `ferroq.Throttle`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleConfig {
    /// Tasks started per second across all workers; `None`: no rate limit.
    pub rate: Option<f64>,
    /// Tokens the bucket holds when full (starts allowed at once after a quiet spell).
    pub burst: f64,
    /// Tasks of the group running at once across all workers; `None`: no cap.
    pub max_concurrency: Option<u32>,
    pub adaptive: Option<Adaptive>,
}

/// Adaptive mode: the cap moves between `min_concurrency` and `max_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adaptive {
    pub min_concurrency: u32,
    /// Runs slower than this count as a congestion signal; `None`: only errors do.
    pub target_latency_ms: Option<Millis>,
    /// Fraction of failed runs in a flush above which the cap is cut.
    pub error_rate: f64,
    /// At most one cut per this long, so one burst of failures does not collapse the cap.
    pub cooldown_ms: Millis,
}

/// The bucket's tokens at `now`, refilled since `at` and capped at `burst`.
pub fn refill(tokens: f64, at: Millis, now: Millis, rate: f64, burst: f64) -> f64 {
    let elapsed = (now - at).max(0) as f64 / 1000.0;
    (tokens + elapsed * rate).min(burst)
}

/// When the bucket next holds a whole token.
pub fn next_token_at(tokens: f64, now: Millis, rate: f64) -> Millis {
    if tokens >= 1.0 || rate <= 0.0 {
        return now;
    }
    now + ((1.0 - tokens) / rate * 1000.0).ceil() as Millis
}

/// What one flush saw of a group's runs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub succeeded: u32,
    /// Failures that signal trouble with the resource (counted, or rate limited).
    pub failed: u32,
    /// Runs over the latency target.
    pub slow: u32,
}

/// Additive increase, multiplicative decrease: +1 per `limit` good runs, halved (at most
/// once per cooldown) when errors or slow runs pass the threshold. Returns the new limit
/// and whether this was a cut.
pub fn aimd(
    limit: f64,
    max: u32,
    adaptive: &Adaptive,
    sample: Sample,
    now: Millis,
    last_cut_at: Option<Millis>,
) -> (f64, bool) {
    let total = sample.succeeded + sample.failed;
    let min = f64::from(adaptive.min_concurrency);
    let max = f64::from(max);
    if total == 0 {
        return (limit.clamp(min, max), false);
    }
    let share = |n: u32| f64::from(n) / f64::from(total);
    let congested =
        share(sample.failed) > adaptive.error_rate || share(sample.slow) > adaptive.error_rate;
    if congested {
        let cooled = last_cut_at.is_none_or(|t| now - t >= adaptive.cooldown_ms);
        if cooled {
            return ((limit / 2.0).max(min), true);
        }
        return (limit.clamp(min, max), false);
    }
    let good = f64::from(sample.succeeded.saturating_sub(sample.slow));
    ((limit + good / limit.max(1.0)).clamp(min, max), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADAPTIVE: Adaptive = Adaptive {
        min_concurrency: 2,
        target_latency_ms: Some(100),
        error_rate: 0.1,
        cooldown_ms: 1000,
    };

    #[test]
    fn bucket_refills_at_the_rate_up_to_the_burst() {
        assert_eq!(refill(0.0, 0, 500, 4.0, 10.0), 2.0);
        assert_eq!(refill(9.0, 0, 10_000, 4.0, 10.0), 10.0);
        assert_eq!(
            refill(1.0, 100, 50, 4.0, 10.0),
            1.0,
            "clock going back adds nothing"
        );
        assert_eq!(next_token_at(0.5, 1000, 2.0), 1250);
        assert_eq!(next_token_at(1.5, 1000, 2.0), 1000);
    }

    #[test]
    fn increases_additively_and_halves_on_errors_once_per_cooldown() {
        let good = Sample {
            succeeded: 10,
            failed: 0,
            slow: 0,
        };
        let (limit, cut) = aimd(10.0, 20, &ADAPTIVE, good, 0, None);
        assert_eq!((limit, cut), (11.0, false));
        let bad = Sample {
            succeeded: 5,
            failed: 5,
            slow: 0,
        };
        let (limit, cut) = aimd(limit, 20, &ADAPTIVE, bad, 0, None);
        assert_eq!((limit, cut), (5.5, true));
        let (again, cut) = aimd(limit, 20, &ADAPTIVE, bad, 500, Some(0));
        assert_eq!((again, cut), (5.5, false), "within the cooldown");
        let (limit, _) = aimd(limit, 20, &ADAPTIVE, bad, 1000, Some(0));
        let (limit, _) = aimd(limit, 20, &ADAPTIVE, bad, 2000, Some(1000));
        assert_eq!(limit, 2.0, "never below the minimum");
        let (limit, _) = aimd(19.5, 20, &ADAPTIVE, good, 0, None);
        assert_eq!(limit, 20.0, "never above the maximum");
    }

    #[test]
    fn slow_runs_cut_like_errors() {
        let slow = Sample {
            succeeded: 10,
            failed: 0,
            slow: 5,
        };
        assert_eq!(aimd(8.0, 20, &ADAPTIVE, slow, 0, None), (4.0, true));
    }
}
