//! The circuit breaker of a resource group, as a pure state machine. The store loads the
//! state, applies an event and saves it in the same transaction as the outcome that caused
//! it, so every process on the file sees one breaker.

use crate::clock::Millis;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Tasks run; failures are counted.
    Closed,
    /// Tasks of the group are not claimed until `open_until`.
    Open,
    /// A few probe tasks run; a success closes the breaker, a failure re-opens it.
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "closed" => Self::Closed,
            "open" => Self::Open,
            "half_open" => Self::HalfOpen,
            _ => return None,
        })
    }
}

/// A breaker's settings (Python: `ferroq.CircuitBreaker`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Counted failures within `window_ms` that open the breaker.
    pub failure_threshold: u32,
    pub window_ms: Millis,
    /// How long the first opening lasts; each re-opening from half-open doubles it...
    pub open_ms: Millis,
    /// ...up to this.
    pub max_open_ms: Millis,
    /// Tasks let through at once while half-open.
    pub half_open_probes: u32,
}

/// A breaker's persisted state.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerState {
    pub state: CircuitState,
    /// Times of the counted failures still inside the window (closed only), oldest first;
    /// never more than the threshold, so the row stays small.
    pub failures: Vec<Millis>,
    pub opened_at: Option<Millis>,
    /// `None` while open: open until closed by hand.
    pub open_until: Option<Millis>,
    /// Openings since the breaker last closed: sets the next open duration.
    pub trips: u32,
}

/// One state change, to record with its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub from: CircuitState,
    pub to: CircuitState,
    pub reason: String,
}

impl Default for BreakerState {
    fn default() -> Self {
        Self {
            state: CircuitState::Closed,
            failures: Vec::new(),
            opened_at: None,
            open_until: None,
            trips: 0,
        }
    }
}

impl BreakerState {
    /// A counted failure of a task of the group.
    pub fn on_failure(&mut self, cfg: &BreakerConfig, now: Millis) -> Option<Change> {
        match self.state {
            CircuitState::Closed => {
                self.failures.retain(|&t| t > now - cfg.window_ms);
                self.failures.push(now);
                let excess = self
                    .failures
                    .len()
                    .saturating_sub(cfg.failure_threshold as usize);
                self.failures.drain(..excess);
                if self.failures.len() >= cfg.failure_threshold as usize {
                    let reason = format!(
                        "{} failures within {}",
                        self.failures.len(),
                        seconds(cfg.window_ms)
                    );
                    return Some(self.open(cfg, now, reason));
                }
                None
            }
            CircuitState::HalfOpen => Some(self.open(cfg, now, "a probe failed".into())),
            // Runs that started before the breaker opened: already accounted for.
            CircuitState::Open => None,
        }
    }

    /// A successful run of a task of the group.
    pub fn on_success(&mut self) -> Option<Change> {
        match self.state {
            CircuitState::HalfOpen => Some(self.close("a probe succeeded".into())),
            CircuitState::Closed | CircuitState::Open => None,
        }
    }

    /// Moves an open breaker whose time is up to half-open.
    pub fn poll(&mut self, now: Millis) -> Option<Change> {
        match (self.state, self.open_until) {
            (CircuitState::Open, Some(until)) if now >= until => {
                Some(self.set(CircuitState::HalfOpen, "open time elapsed".into()))
            }
            _ => None,
        }
    }

    /// Opens by hand, for `duration_ms` (or until closed by hand).
    pub fn force_open(
        &mut self,
        now: Millis,
        duration_ms: Option<Millis>,
        reason: String,
    ) -> Option<Change> {
        self.opened_at = Some(now);
        self.open_until = duration_ms.map(|d| now + d);
        self.failures.clear();
        (self.state != CircuitState::Open).then(|| self.set(CircuitState::Open, reason))
    }

    /// Closes by hand.
    pub fn force_close(&mut self, reason: String) -> Option<Change> {
        (self.state != CircuitState::Closed).then(|| self.close(reason))
    }

    /// Closed, with the failure count and the open-time backoff forgotten.
    pub fn reset(&mut self, reason: String) -> Option<Change> {
        let change = self.force_close(reason);
        *self = Self::default();
        change
    }

    fn open(&mut self, cfg: &BreakerConfig, now: Millis, reason: String) -> Change {
        let factor = 1i64.checked_shl(self.trips.min(30)).unwrap_or(i64::MAX);
        let duration = cfg.open_ms.saturating_mul(factor).min(cfg.max_open_ms);
        self.trips = self.trips.saturating_add(1);
        self.opened_at = Some(now);
        self.open_until = Some(now + duration);
        self.failures.clear();
        self.set(
            CircuitState::Open,
            format!("{reason}; open for {}", seconds(duration)),
        )
    }

    fn close(&mut self, reason: String) -> Change {
        self.trips = 0;
        self.failures.clear();
        self.opened_at = None;
        self.open_until = None;
        self.set(CircuitState::Closed, reason)
    }

    fn set(&mut self, to: CircuitState, reason: String) -> Change {
        let from = std::mem::replace(&mut self.state, to);
        Change { from, to, reason }
    }
}

fn seconds(ms: Millis) -> String {
    format!("{}s", ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BreakerConfig = BreakerConfig {
        failure_threshold: 3,
        window_ms: 1000,
        open_ms: 500,
        max_open_ms: 1500,
        half_open_probes: 1,
    };

    #[test]
    fn opens_after_the_threshold_within_the_window_only() {
        let mut b = BreakerState::default();
        assert_eq!(b.on_failure(&CFG, 0), None);
        assert_eq!(b.on_failure(&CFG, 900), None);
        // The first failure has left the window: two in the window, still closed.
        assert_eq!(b.on_failure(&CFG, 1500), None);
        let change = b.on_failure(&CFG, 1600).unwrap();
        assert_eq!(
            (change.from, change.to),
            (CircuitState::Closed, CircuitState::Open)
        );
        assert_eq!(b.open_until, Some(2100));
        assert!(b.failures.len() <= 3);
    }

    #[test]
    fn half_open_probe_closes_or_reopens_with_a_longer_time() {
        let mut b = BreakerState::default();
        for t in 0..3 {
            b.on_failure(&CFG, t);
        }
        assert_eq!(b.poll(400), None);
        assert_eq!(b.poll(502).unwrap().to, CircuitState::HalfOpen);
        assert_eq!(b.on_failure(&CFG, 600).unwrap().to, CircuitState::Open);
        assert_eq!(
            b.open_until,
            Some(1600),
            "second opening lasts twice as long"
        );
        b.poll(1600);
        b.on_failure(&CFG, 1700);
        assert_eq!(b.open_until, Some(3200), "capped at max_open_ms");
        b.poll(3200);
        assert_eq!(b.on_success().unwrap().to, CircuitState::Closed);
        assert_eq!(b.trips, 0);
        assert_eq!(b.on_success(), None);
    }

    #[test]
    fn failures_while_open_do_not_extend_it() {
        let mut b = BreakerState::default();
        for t in 0..3 {
            b.on_failure(&CFG, t);
        }
        let until = b.open_until;
        assert_eq!(b.on_failure(&CFG, 100), None);
        assert_eq!(b.open_until, until);
    }

    #[test]
    fn forced_open_without_duration_stays_open() {
        let mut b = BreakerState::default();
        assert_eq!(
            b.force_open(0, None, "ops".into()).unwrap().to,
            CircuitState::Open
        );
        assert_eq!(b.poll(i64::MAX / 2), None);
        assert_eq!(
            b.force_close("ops".into()).unwrap().to,
            CircuitState::Closed
        );
        assert_eq!(b.force_close("again".into()), None);
    }
}
