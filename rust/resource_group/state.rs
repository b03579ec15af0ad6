//! A resource group's decisions, engine-neutral: what a claim may start (pause, Retry-After
//! hold, breaker, cap, token bucket), what finished runs do to the breaker and the adaptive
//! cap, what an operator's command or new settings change. An engine loads a `GroupState`
//! inside its transaction, calls these, saves the state and records the `GroupEvent`s it
//! got back, in order; it decides nothing itself.

use crate::clock::Millis;
use crate::json;
use crate::policy::breaker::{BreakerState, Change, CircuitState};
use crate::policy::throttle::{self, Sample};
use crate::store::{CircuitCommand, CircuitView};
use crate::task::{RunEnd, RunEndKind};

use super::{GroupConfig, GroupInfo};

/// A group's stored settings and moving state, as loaded for one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupState {
    pub name: String,
    pub paused: bool,
    pub config: GroupConfig,
    /// The token bucket as last written, and when (refilled on read: `tokens_now`).
    pub tokens: Option<f64>,
    pub tokens_at: Option<Millis>,
    /// Where AIMD put the running cap (adaptive mode), fractional.
    pub concurrency_limit: Option<f64>,
    pub last_cut_at: Option<Millis>,
    /// A Retry-After holds the group until then.
    pub blocked_until: Option<Millis>,
    pub breaker: BreakerState,
}

/// A change to record as an event of the group, in the order returned.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupEvent {
    /// The breaker moved.
    Circuit(Change),
    /// The whole part of an adaptive cap moved; `cut`: by a decrease.
    Throttle {
        limit: f64,
        previous: f64,
        cut: bool,
    },
}

impl GroupEvent {
    /// The event's kind, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Circuit(c) => match c.to {
                CircuitState::Open => "circuit_opened",
                CircuitState::HalfOpen => "circuit_half_open",
                CircuitState::Closed => "circuit_closed",
            },
            Self::Throttle { .. } => "throttle_changed",
        }
    }

    /// The event's detail, a JSON object.
    pub fn detail(&self) -> String {
        match self {
            Self::Circuit(c) => format!(
                r#"{{"from":"{}","to":"{}","reason":{}}}"#,
                c.from.as_str(),
                c.to.as_str(),
                json::string(&c.reason)
            ),
            Self::Throttle {
                limit,
                previous,
                cut,
            } => format!(
                r#"{{"concurrency_limit":{},"previous":{},"reason":"{}"}}"#,
                limit,
                previous,
                if *cut {
                    "errors or slow runs"
                } else {
                    "runs succeeding"
                }
            ),
        }
    }

    /// Logs what an operator should hear of at once (a breaker's move).
    pub fn log(&self, queue: &str, group: &str) {
        if let Self::Circuit(c) = self {
            log::warn!(
                "circuit of group {group:?} (queue {queue:?}): {} -> {}: {}",
                c.from.as_str(),
                c.to.as_str(),
                c.reason
            );
        }
    }
}

impl GroupState {
    /// A group with no stored row: no settings, closed, unlimited.
    pub fn unconfigured(name: &str) -> Self {
        Self {
            name: name.to_string(),
            paused: false,
            config: GroupConfig::default(),
            tokens: None,
            tokens_at: None,
            concurrency_limit: None,
            last_cut_at: None,
            blocked_until: None,
            breaker: BreakerState::default(),
        }
    }

    /// The running cap now, if any.
    pub fn cap(&self) -> Option<u32> {
        let t = self.config.throttle.as_ref()?;
        let max = t.max_concurrency?;
        Some(match (t.adaptive, self.concurrency_limit) {
            (Some(_), Some(limit)) => (limit.floor() as u32).clamp(1, max),
            _ => max,
        })
    }

    /// Tokens in the bucket at `now`, if the group has a rate.
    pub fn tokens_now(&self, now: Millis) -> Option<f64> {
        let t = self.config.throttle.as_ref()?;
        let rate = t.rate?;
        Some(match (self.tokens, self.tokens_at) {
            (Some(tokens), Some(at)) => throttle::refill(tokens, at, now, rate, t.burst),
            _ => t.burst,
        })
    }

    /// Moves an open breaker whose time is up to half-open (what a claim does first).
    pub fn poll(&mut self, now: Millis) -> Option<GroupEvent> {
        self.breaker.poll(now).map(GroupEvent::Circuit)
    }

    /// How many tasks of this group may start now, with `running` of them running:
    /// `None` means no limit.
    pub fn allowance(&self, running: u32, now: Millis) -> Option<u64> {
        if self.paused || self.blocked_until.is_some_and(|t| t > now) {
            return Some(0);
        }
        let mut allowed: Option<u64> = None;
        let mut limit = |n: u64| allowed = Some(allowed.map_or(n, |a| a.min(n)));
        match self.breaker.state {
            CircuitState::Open => limit(0),
            CircuitState::HalfOpen => {
                let probes = self.config.breaker.map_or(1, |b| b.half_open_probes);
                limit(u64::from(probes.saturating_sub(running)));
            }
            CircuitState::Closed => {}
        }
        if let Some(cap) = self.cap() {
            limit(u64::from(cap.saturating_sub(running)));
        }
        if let Some(tokens) = self.tokens_now(now) {
            limit(tokens.max(0.0).floor() as u64);
        }
        allowed
    }

    /// Whether `allowance` needs the running count of this group.
    pub fn needs_running(&self) -> bool {
        self.cap().is_some() || self.breaker.state == CircuitState::HalfOpen
    }

    /// Takes `n` tokens for tasks just started; returns whether the state changed (to
    /// save). Nothing changes when none started: an empty claim must write nothing (a
    /// write wakes every waiting worker).
    pub fn consume(&mut self, n: usize, now: Millis) -> bool {
        if n == 0 {
            return false;
        }
        let Some(tokens) = self.tokens_now(now) else {
            return false;
        };
        self.tokens = Some(tokens - n as f64);
        self.tokens_at = Some(now);
        true
    }

    /// Feeds finished runs of this group to its breaker, its Retry-After hold and its
    /// adaptive cap; returns the changes to record, in order.
    pub fn account<'a>(
        &mut self,
        ends: impl IntoIterator<Item = &'a RunEnd>,
        now: Millis,
    ) -> Vec<GroupEvent> {
        let mut events = Vec::new();
        let mut sample = Sample::default();
        let target = self
            .config
            .throttle
            .and_then(|t| t.adaptive)
            .and_then(|a| a.target_latency_ms);
        for end in ends {
            let change = match end.kind {
                RunEndKind::Succeeded => {
                    sample.succeeded += 1;
                    if let (Some(target), Some(start)) = (target, end.started_at)
                        && now - start > target
                    {
                        sample.slow += 1;
                    }
                    self.breaker.on_success()
                }
                RunEndKind::Failed { counts, hold_ms } => {
                    if let Some(hold) = hold_ms {
                        self.blocked_until = Some(self.blocked_until.unwrap_or(0).max(now + hold));
                        sample.failed += 1;
                    }
                    if counts {
                        // A rate-limited failure was counted for the cap just above.
                        sample.failed += u32::from(hold_ms.is_none());
                        match self.config.breaker {
                            Some(cfg) => self.breaker.on_failure(&cfg, now),
                            None => None,
                        }
                    } else {
                        None
                    }
                }
            };
            events.extend(change.map(GroupEvent::Circuit));
        }
        events.extend(self.adapt(sample, now));
        events
    }

    /// Moves an adaptive cap by AIMD; an event when its whole part changed.
    fn adapt(&mut self, sample: Sample, now: Millis) -> Option<GroupEvent> {
        let t = self.config.throttle?;
        let (Some(adaptive), Some(max)) = (t.adaptive, t.max_concurrency) else {
            return None;
        };
        let before = self.concurrency_limit.unwrap_or(f64::from(max));
        let (after, cut) = throttle::aimd(before, max, &adaptive, sample, now, self.last_cut_at);
        self.concurrency_limit = Some(after);
        if cut {
            self.last_cut_at = Some(now);
        }
        (before.floor() != after.floor()).then(|| GroupEvent::Throttle {
            limit: after.floor(),
            previous: before.floor(),
            cut,
        })
    }

    /// Applies an operator's command to the breaker.
    pub fn command(
        &mut self,
        command: &CircuitCommand,
        reason: &str,
        now: Millis,
    ) -> Option<GroupEvent> {
        let reason = format!("operator: {reason}");
        let change = match command {
            CircuitCommand::Open { duration_ms } => {
                self.breaker.force_open(now, *duration_ms, reason)
            }
            CircuitCommand::Close => self.breaker.force_close(reason),
            CircuitCommand::Reset => self.breaker.reset(reason),
        };
        change.map(GroupEvent::Circuit)
    }

    /// Takes new settings, keeping the moving state where it still applies: an unchanged
    /// adaptive cap stays where AIMD put it (a new or changed one starts at its maximum),
    /// the bucket keeps its tokens up to the new burst (a new one starts full).
    pub fn configure(&mut self, config: &GroupConfig, now: Millis) {
        let t = config.throttle;
        let adaptive = t.and_then(|t| t.adaptive);
        let limit = match (adaptive, t.and_then(|t| t.max_concurrency)) {
            (Some(_), Some(max))
                if self.config.throttle.and_then(|t| t.max_concurrency) == Some(max) =>
            {
                Some(
                    self.concurrency_limit
                        .unwrap_or(f64::from(max))
                        .min(f64::from(max)),
                )
            }
            (Some(_), Some(max)) => Some(f64::from(max)),
            _ => None,
        };
        let rate = t.and_then(|t| t.rate);
        let tokens = match (rate, self.tokens_now(now)) {
            (Some(_), Some(tokens)) => Some(tokens.min(t.map_or(1.0, |t| t.burst))),
            (Some(_), None) => t.map(|t| t.burst),
            _ => None,
        };
        self.config = *config;
        self.concurrency_limit = limit;
        self.tokens = tokens;
        self.tokens_at = tokens.map(|_| now);
    }

    /// The earliest future time at which this group may start a task again, if it is
    /// held by time (a Retry-After, an open breaker, an empty bucket).
    pub fn unblocks_at(&self, now: Millis) -> Option<Millis> {
        let mut at: Option<Millis> = None;
        let mut later = |t: Millis| {
            if t > now {
                at = Some(at.map_or(t, |a| a.max(t)));
            }
        };
        if let Some(t) = self.blocked_until {
            later(t);
        }
        if self.breaker.state == CircuitState::Open {
            // Open by hand with no end: only a person (a change to the file) reopens it.
            later(self.breaker.open_until.unwrap_or(Millis::MAX));
        }
        if let (Some(tokens), Some(rate)) = (
            self.tokens_now(now),
            self.config.throttle.and_then(|t| t.rate),
        ) {
            later(throttle::next_token_at(tokens, now, rate));
        }
        at.filter(|&t| t != Millis::MAX)
    }

    /// The breaker as the next claim will see it.
    pub fn circuit_view(&self, now: Millis) -> CircuitView {
        let mut breaker = self.breaker.clone();
        breaker.poll(now);
        CircuitView::new(breaker.state, breaker.open_until, self.config.breaker, now)
    }

    /// The group as it stands (as the next claim will see it), with its task counts.
    pub fn info(&self, queue: &str, running: u64, pending: u64, now: Millis) -> GroupInfo {
        let mut breaker = self.breaker.clone();
        breaker.poll(now);
        GroupInfo {
            queue: queue.to_string(),
            name: self.name.clone(),
            paused: self.paused,
            config: self.config,
            circuit: breaker.state,
            recent_failures: breaker.failures.len() as u32,
            open_until: breaker.open_until,
            trips: breaker.trips,
            tokens: self.tokens_now(now),
            concurrency_limit: self.cap(),
            blocked_until: self.blocked_until.filter(|&t| t > now),
            running,
            pending,
        }
    }
}

/// The earliest future time any of `groups` held by time may start a task again.
pub fn next_unblock_at(groups: &[GroupState], now: Millis) -> Option<Millis> {
    groups.iter().filter_map(|g| g.unblocks_at(now)).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::breaker::BreakerConfig;
    use crate::policy::throttle::{Adaptive, ThrottleConfig};
    use crate::task::TaskStatus;

    const BREAKER: BreakerConfig = BreakerConfig {
        failure_threshold: 2,
        window_ms: 10_000,
        open_ms: 1_000,
        max_open_ms: 8_000,
        half_open_probes: 2,
    };

    fn throttle(rate: Option<f64>, max: Option<u32>, adaptive: Option<Adaptive>) -> ThrottleConfig {
        ThrottleConfig {
            rate,
            burst: 3.0,
            max_concurrency: max,
            adaptive,
        }
    }

    fn group(breaker: Option<BreakerConfig>, throttle: Option<ThrottleConfig>) -> GroupState {
        let mut g = GroupState::unconfigured("api");
        g.configure(&GroupConfig { breaker, throttle }, 0);
        g
    }

    fn end(kind: RunEndKind, started_at: Millis) -> RunEnd {
        RunEnd {
            task_id: 1,
            status: TaskStatus::Completed,
            queue: "q".into(),
            group: "api".into(),
            name: "t".into(),
            started_at: Some(started_at),
            kind,
            run_us: None,
        }
    }

    fn ok(started_at: Millis) -> RunEnd {
        end(RunEndKind::Succeeded, started_at)
    }

    fn failed(hold_ms: Option<Millis>) -> RunEnd {
        end(
            RunEndKind::Failed {
                counts: true,
                hold_ms,
            },
            0,
        )
    }

    fn kinds(events: &[GroupEvent]) -> Vec<&'static str> {
        events.iter().map(GroupEvent::kind).collect()
    }

    #[test]
    fn an_unconfigured_group_is_unlimited() {
        let g = GroupState::unconfigured("api");
        assert_eq!(g.allowance(1_000, 0), None);
        assert!(!g.needs_running());
        assert_eq!(g.unblocks_at(0), None);
    }

    #[test]
    fn the_bucket_starts_full_refills_at_the_rate_and_is_spent_by_starts() {
        let mut g = group(None, Some(throttle(Some(2.0), None, None)));
        assert_eq!(g.tokens_now(0), Some(3.0), "starts at the burst");
        assert_eq!(g.allowance(0, 0), Some(3));
        assert!(g.consume(3, 0));
        assert_eq!(g.allowance(0, 0), Some(0));
        assert_eq!(g.unblocks_at(0), Some(500), "one token at 2 a second");
        assert_eq!(g.allowance(0, 500), Some(1));
        assert_eq!(g.tokens_now(10_000), Some(3.0), "never above the burst");
        assert!(!g.consume(0, 600), "nothing started: nothing to save");
        assert_eq!(g.tokens_at, Some(0));
        let mut capped = group(None, Some(throttle(None, Some(2), None)));
        assert!(!capped.consume(5, 0), "no bucket: nothing to save");
    }

    #[test]
    fn the_allowance_is_the_least_of_cap_tokens_and_breaker() {
        let g = group(None, Some(throttle(Some(1.0), Some(5), None)));
        assert!(g.needs_running());
        assert_eq!(g.allowance(0, 0), Some(3), "tokens");
        assert_eq!(g.allowance(4, 0), Some(1), "cap");
        assert_eq!(g.allowance(9, 0), Some(0), "over the cap");
        let mut open = group(Some(BREAKER), Some(throttle(None, Some(5), None)));
        open.command(&CircuitCommand::Open { duration_ms: None }, "ops", 0);
        assert_eq!(open.allowance(0, 0), Some(0), "open");
        let mut paused = group(None, None);
        paused.paused = true;
        assert_eq!(paused.allowance(0, 0), Some(0), "paused");
    }

    #[test]
    fn the_breaker_opens_on_failures_probes_half_open_and_closes_on_a_success() {
        let mut g = group(Some(BREAKER), None);
        assert_eq!(g.account(&[failed(None)], 0), []);
        let events = g.account(&[failed(None)], 100);
        assert_eq!(kinds(&events), ["circuit_opened"]);
        assert_eq!(g.allowance(0, 500), Some(0));
        assert_eq!(g.unblocks_at(500), Some(1_100));
        assert_eq!(g.poll(500), None, "not yet");
        assert_eq!(
            g.poll(1_100).as_ref().map(GroupEvent::kind),
            Some("circuit_half_open")
        );
        assert!(g.needs_running());
        assert_eq!(g.allowance(0, 1_100), Some(2), "the probes");
        assert_eq!(g.allowance(1, 1_100), Some(1), "one probe running");
        // A failed probe reopens it for twice as long.
        assert_eq!(
            kinds(&g.account(&[failed(None)], 1_200)),
            ["circuit_opened"]
        );
        assert_eq!(g.breaker.open_until, Some(3_200));
        g.poll(3_200);
        let events = g.account(&[ok(3_200)], 3_300);
        assert_eq!(kinds(&events), ["circuit_closed"]);
        assert_eq!(g.allowance(0, 3_300), None);
        assert_eq!(
            events[0].detail(),
            r#"{"from":"half_open","to":"closed","reason":"a probe succeeded"}"#
        );
    }

    #[test]
    fn failures_that_do_not_count_leave_the_breaker_alone() {
        let mut g = group(Some(BREAKER), None);
        let ignored = end(
            RunEndKind::Failed {
                counts: false,
                hold_ms: None,
            },
            0,
        );
        assert_eq!(g.account(&[ignored.clone(), ignored], 0), []);
        assert_eq!(g.breaker.state, CircuitState::Closed);
    }

    #[test]
    fn a_retry_after_holds_the_group_until_the_latest_hold() {
        let mut g = group(None, None);
        g.account(&[failed(Some(5_000)), failed(Some(2_000))], 1_000);
        assert_eq!(g.blocked_until, Some(6_000));
        assert_eq!(g.allowance(0, 5_999), Some(0));
        assert_eq!(g.unblocks_at(1_000), Some(6_000));
        assert_eq!(g.allowance(0, 6_000), None);
        // A shorter hold later does not shorten it.
        g.account(&[failed(Some(100))], 2_000);
        assert_eq!(g.blocked_until, Some(6_000));
    }

    #[test]
    fn an_adaptive_cap_halves_on_errors_and_grows_back_on_successes() {
        let adaptive = Adaptive {
            min_concurrency: 1,
            target_latency_ms: Some(1_000),
            error_rate: 0.1,
            cooldown_ms: 1_000,
        };
        let mut g = group(None, Some(throttle(None, Some(8), Some(adaptive))));
        assert_eq!(g.cap(), Some(8));
        let events = g.account(&[failed(None), ok(0)], 0);
        assert_eq!(g.cap(), Some(4), "halved");
        assert_eq!(
            events,
            [GroupEvent::Throttle {
                limit: 4.0,
                previous: 8.0,
                cut: true
            }]
        );
        assert_eq!(g.account(&[failed(None)], 500), [], "within the cooldown");
        assert_eq!(g.cap(), Some(4));
        // Slow runs are congestion too.
        g.account(&[ok(0)], 2_000);
        assert_eq!(g.cap(), Some(2));
        // Good runs: +1 per cap's worth.
        let events = g.account(&[ok(3_000), ok(3_000)], 3_100);
        assert_eq!(g.cap(), Some(3));
        assert_eq!(kinds(&events), ["throttle_changed"]);
        assert!(events[0].detail().contains("runs succeeding"));
        // The same settings again keep the cap; a new maximum starts over.
        g.configure(&g.config.clone(), 4_000);
        assert_eq!(g.cap(), Some(3));
        g.configure(
            &GroupConfig {
                breaker: None,
                throttle: Some(throttle(None, Some(6), Some(adaptive))),
            },
            4_000,
        );
        assert_eq!(g.cap(), Some(6));
    }

    #[test]
    fn new_settings_keep_the_tokens_up_to_the_new_burst() {
        let mut g = group(None, Some(throttle(Some(1.0), None, None)));
        g.consume(2, 0);
        g.configure(&g.config.clone(), 0);
        assert_eq!(g.tokens_now(0), Some(1.0));
        let mut smaller = throttle(Some(1.0), None, None);
        smaller.burst = 1.0;
        let mut full = group(None, Some(throttle(Some(1.0), None, None)));
        full.configure(
            &GroupConfig {
                breaker: None,
                throttle: Some(smaller),
            },
            0,
        );
        assert_eq!(full.tokens_now(0), Some(1.0));
        full.configure(&GroupConfig::default(), 0);
        assert_eq!((full.tokens, full.tokens_at), (None, None));
    }

    #[test]
    fn operators_commands_move_the_breaker_with_their_reason() {
        let mut g = group(Some(BREAKER), None);
        let opened = g
            .command(
                &CircuitCommand::Open {
                    duration_ms: Some(500),
                },
                "deploy",
                0,
            )
            .unwrap();
        assert_eq!(opened.kind(), "circuit_opened");
        assert!(opened.detail().contains(r#""reason":"operator: deploy""#));
        assert_eq!(g.circuit_view(100).open_for_ms, Some(400));
        assert_eq!(
            g.circuit_view(500).state,
            CircuitState::HalfOpen,
            "as a claim sees it"
        );
        assert_eq!(
            g.breaker.state,
            CircuitState::Open,
            "a view changes nothing"
        );
        assert_eq!(
            g.command(&CircuitCommand::Close, "done", 0).unwrap().kind(),
            "circuit_closed"
        );
        assert_eq!(g.command(&CircuitCommand::Close, "again", 0), None);
        let info = g.info("q", 1, 2, 0);
        assert_eq!(
            (info.circuit, info.running, info.pending),
            (CircuitState::Closed, 1, 2)
        );
    }

    #[test]
    fn the_earliest_unblock_is_the_soonest_group_held_by_time() {
        let mut held = group(None, None);
        held.blocked_until = Some(700);
        let mut open = group(Some(BREAKER), None);
        open.command(
            &CircuitCommand::Open {
                duration_ms: Some(300),
            },
            "x",
            0,
        );
        let mut forever = group(Some(BREAKER), None);
        forever.command(&CircuitCommand::Open { duration_ms: None }, "x", 0);
        assert_eq!(
            next_unblock_at(&[held, open, forever.clone()], 0),
            Some(300)
        );
        assert_eq!(
            next_unblock_at(&[forever], 0),
            None,
            "only a person reopens it"
        );
    }
}
