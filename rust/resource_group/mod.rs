//! Resource groups: the settings that protect a shared resource (breaker, throttle), what a
//! group looks like from outside, the events that record its changes, and (`state`) every
//! decision about it, engine-neutral.

pub mod state;

pub use state::{GroupEvent, GroupState};

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::policy::breaker::{BreakerConfig, CircuitState};
use crate::policy::throttle::ThrottleConfig;

/// What `configure_group` stores. `None` removes that protection.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupConfig {
    pub breaker: Option<BreakerConfig>,
    pub throttle: Option<ThrottleConfig>,
}

/// A group as it stands now, for `q.group(...).state()` and the CLI.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInfo {
    pub queue: String,
    pub name: String,
    pub paused: bool,
    pub config: GroupConfig,
    pub circuit: CircuitState,
    /// Counted failures inside the breaker's window (closed only).
    pub recent_failures: u32,
    pub open_until: Option<Millis>,
    pub trips: u32,
    /// Tokens in the rate bucket now.
    pub tokens: Option<f64>,
    /// The running cap now (adaptive mode moves it).
    pub concurrency_limit: Option<u32>,
    /// A processor's Retry-After holds the group until then.
    pub blocked_until: Option<Millis>,
    pub running: u64,
    pub pending: u64,
}

/// One recorded change of a group or queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub at: Millis,
    pub queue: String,
    pub resource_group: Option<String>,
    pub task_id: Option<i64>,
    pub kind: String,
    /// JSON object with the event's details (`reason`, `from`, `to`, ...).
    pub detail: Option<String>,
}

/// Checks settings before they are stored.
pub fn validate(config: &GroupConfig) -> Result<()> {
    if let Some(b) = &config.breaker {
        check(
            b.failure_threshold >= 1,
            "failure_threshold must be at least 1",
        )?;
        check(
            b.half_open_probes >= 1,
            "half_open_probes must be at least 1",
        )?;
        check(b.window_ms > 0, "window must be positive")?;
        check(b.open_ms > 0, "open_for must be positive")?;
        check(
            b.max_open_ms >= b.open_ms,
            "max_open_for must be at least open_for",
        )?;
    }
    if let Some(t) = &config.throttle {
        check(
            t.rate.is_some() || t.max_concurrency.is_some(),
            "a throttle needs a rate, a max_concurrency or both",
        )?;
        if let Some(rate) = t.rate {
            check(
                rate.is_finite() && rate > 0.0,
                "rate must be a positive number",
            )?;
            check(
                t.burst.is_finite() && t.burst >= 1.0,
                "burst must be at least 1",
            )?;
        }
        if let Some(max) = t.max_concurrency {
            check(max >= 1, "max_concurrency must be at least 1")?;
        }
        if let Some(a) = &t.adaptive {
            let Some(max) = t.max_concurrency else {
                return Err(Error::InvalidArgument(
                    "adaptive mode needs max_concurrency".into(),
                ));
            };
            check(
                a.min_concurrency >= 1 && a.min_concurrency <= max,
                "min_concurrency must be between 1 and max_concurrency",
            )?;
            check(
                (0.0..1.0).contains(&a.error_rate),
                "error_rate must be in [0, 1)",
            )?;
            check(a.cooldown_ms >= 0, "cooldown must not be negative")?;
            check(
                a.target_latency_ms.is_none_or(|t| t > 0),
                "target_latency must be positive",
            )?;
        }
    }
    Ok(())
}

fn check(ok: bool, message: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(message.into()))
    }
}
