//! Resource groups: pause, circuit breaker, throttle and priority aging, as every storage
//! engine must enforce them in the claim.

use super::{LEASE, Q, fixture, ids, task};
use std::sync::Arc;

use crate::clock::{Clock, ManualClock};
use crate::policy::breaker::{BreakerConfig, CircuitState};
use crate::policy::throttle::{Adaptive, ThrottleConfig};
use crate::resource_group::GroupConfig;
use crate::store::CircuitCommand;
use crate::task::{FailAction, FailureImpact, NewTask, Outcome, TaskStatus};

fn in_group(group: &str, priority: i64) -> NewTask<'_> {
    NewTask {
        resource_group: group.into(),
        ..task("t", priority)
    }
}

const BREAKER: BreakerConfig = BreakerConfig {
    failure_threshold: 2,
    window_ms: 10_000,
    open_ms: 1_000,
    max_open_ms: 8_000,
    half_open_probes: 1,
};

fn breaker_only() -> GroupConfig {
    GroupConfig {
        breaker: Some(BREAKER),
        throttle: None,
    }
}

fn throttle(rate: Option<f64>, burst: f64, max_concurrency: Option<u32>) -> GroupConfig {
    GroupConfig {
        breaker: None,
        throttle: Some(ThrottleConfig {
            rate,
            burst,
            max_concurrency,
            adaptive: None,
        }),
    }
}

fn fail_all(f: &super::Fixture, tasks: &[crate::task::ClaimedTask], impact: FailureImpact) {
    let outcomes: Vec<Outcome> = tasks
        .iter()
        .map(|t| Outcome::Failed {
            id: t.id,
            token: t.token,
            error: "{}".into(),
            action: FailAction::Retry { delay_ms: 0 },
            impact,
            run_us: None,
        })
        .collect();
    f.store.finish_many(&outcomes).unwrap();
}

/// Gives group "pay" a breaker and fails its first two tasks: the circuit opens.
fn trip_breaker(f: &super::Fixture) {
    f.store.configure_group(Q, "pay", &breaker_only()).unwrap();
    f.store
        .enqueue(Q, &[in_group("pay", 0), in_group("pay", 0)])
        .unwrap();
    let first = f.store.claim(Q, "w", 2, LEASE).unwrap();
    fail_all(f, &first, FailureImpact::default());
}

#[test]
fn an_open_breaker_holds_its_group_pending_and_a_probe_closes_it() {
    let Some(f) = fixture() else { return };
    f.store.configure_group(Q, "pay", &breaker_only()).unwrap();
    f.store
        .enqueue(
            Q,
            &[in_group("pay", 0), in_group("pay", 0), in_group("pay", 0)],
        )
        .unwrap();
    let first = f.store.claim(Q, "w", 2, LEASE).unwrap();
    fail_all(&f, &first, FailureImpact::default());
    assert_eq!(
        f.store.group_info(Q, "pay").unwrap().circuit,
        CircuitState::Open
    );
    // Other groups run; the open group's tasks stay pending with their attempts.
    let other = f.store.enqueue(Q, &[task("x", 0)]).unwrap();
    assert_eq!(
        ids(&f.store.claim(Q, "w", 10, LEASE).unwrap()),
        vec![other[0].id]
    );
    let info = f.store.group_info(Q, "pay").unwrap();
    assert_eq!((info.pending, info.running), (3, 0));
    assert_eq!(f.store.get(Q, first[0].id).unwrap().attempts, 1);
    // After open_for: half-open lets exactly one probe through.
    f.clock.advance(1_000);
    let probe = f.store.claim(Q, "w", 10, LEASE).unwrap();
    assert_eq!(probe.len(), 1);
    assert_eq!(
        f.store.group_info(Q, "pay").unwrap().circuit,
        CircuitState::HalfOpen
    );
    assert!(f.store.claim(Q, "w", 10, LEASE).unwrap().is_empty());
    f.store
        .complete(probe[0].id, probe[0].token, b"null")
        .unwrap();
    assert_eq!(
        f.store.group_info(Q, "pay").unwrap().circuit,
        CircuitState::Closed
    );
    assert_eq!(f.store.claim(Q, "w", 10, LEASE).unwrap().len(), 2);
    let kinds: Vec<String> = f
        .store
        .events(Q, Some("pay"), 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        ["circuit_opened", "circuit_half_open", "circuit_closed"]
    );
}

/// `circuit_state` (what a worker asks after failures) agrees with `group_info` at every
/// step: no row at all, open, due to turn half-open, half-open, closed again.
#[test]
fn circuit_state_agrees_with_group_info() {
    let Some(f) = fixture() else { return };
    let agree = |expected: CircuitState| {
        assert_eq!(f.store.group_info(Q, "pay").unwrap().circuit, expected);
        assert_eq!(f.store.circuit_state(Q, "pay").unwrap(), expected);
    };
    agree(CircuitState::Closed);
    trip_breaker(&f);
    agree(CircuitState::Open);
    f.clock.advance(1_000);
    agree(CircuitState::HalfOpen); // as the next claim will see it
    let probe = f.store.claim(Q, "w", 10, LEASE).unwrap();
    agree(CircuitState::HalfOpen);
    f.store
        .complete(probe[0].id, probe[0].token, b"null")
        .unwrap();
    agree(CircuitState::Closed);
    assert!(f.store.circuit_state(Q, "").is_err());
}

/// `circuit_view` tells a worker how long an open circuit stays open and the breaker's
/// settings; nothing about a group without a row.
#[test]
fn circuit_view_reports_the_time_left_open_and_the_settings() {
    let Some(f) = fixture() else { return };
    let none = f.store.circuit_view(Q, "nobody").unwrap();
    assert_eq!(
        (none.state, none.open_for_ms, none.config),
        (CircuitState::Closed, None, None)
    );
    trip_breaker(&f);
    let open = f.store.circuit_view(Q, "pay").unwrap();
    assert_eq!(open.state, CircuitState::Open);
    let cfg = open.config.expect("pay has a breaker");
    assert_eq!(open.open_for_ms, Some(cfg.open_ms));
    f.clock.advance(cfg.open_ms / 2);
    assert_eq!(
        f.store.circuit_view(Q, "pay").unwrap().open_for_ms,
        Some(cfg.open_ms - cfg.open_ms / 2)
    );
    f.clock.advance(cfg.open_ms);
    let half = f.store.circuit_view(Q, "pay").unwrap();
    assert_eq!(
        (half.state, half.open_for_ms),
        (CircuitState::HalfOpen, None)
    );
    assert!(f.store.circuit_view(Q, "").is_err());
}

#[test]
fn a_failed_probe_reopens_for_longer() {
    let Some(f) = fixture() else { return };
    trip_breaker(&f);
    f.clock.advance(1_000);
    let probe = f.store.claim(Q, "w", 10, LEASE).unwrap();
    fail_all(&f, &probe, FailureImpact::default());
    let info = f.store.group_info(Q, "pay").unwrap();
    assert_eq!(info.circuit, CircuitState::Open);
    assert_eq!(info.open_until, Some(f.store.now_ms() + 2_000));
}

#[test]
fn uncounted_failures_leave_the_breaker_closed() {
    let Some(f) = fixture() else { return };
    f.store.configure_group(Q, "pay", &breaker_only()).unwrap();
    f.store
        .enqueue(Q, &[in_group("pay", 0), in_group("pay", 0)])
        .unwrap();
    let claimed = f.store.claim(Q, "w", 2, LEASE).unwrap();
    let ignored = FailureImpact {
        counts: false,
        hold_ms: None,
    };
    fail_all(&f, &claimed, ignored);
    assert_eq!(
        f.store.group_info(Q, "pay").unwrap().circuit,
        CircuitState::Closed
    );
}

#[test]
fn operators_open_close_and_reset_a_breaker() {
    let Some(f) = fixture() else { return };
    f.store.enqueue(Q, &[in_group("pay", 0)]).unwrap();
    let open = CircuitCommand::Open { duration_ms: None };
    assert_eq!(
        f.store.circuit(Q, "pay", &open, "maintenance").unwrap(),
        CircuitState::Open
    );
    f.clock.advance(1_000_000);
    assert!(f.store.claim(Q, "w", 10, LEASE).unwrap().is_empty());
    assert_eq!(
        f.store.next_unblock_at(Q).unwrap(),
        None,
        "open by hand has no end"
    );
    assert_eq!(
        f.store
            .circuit(Q, "pay", &CircuitCommand::Close, "done")
            .unwrap(),
        CircuitState::Closed
    );
    assert_eq!(f.store.claim(Q, "w", 10, LEASE).unwrap().len(), 1);
    let timed = CircuitCommand::Open {
        duration_ms: Some(500),
    };
    f.store.circuit(Q, "pay", &timed, "x").unwrap();
    assert_eq!(
        f.store.next_unblock_at(Q).unwrap(),
        Some(f.store.now_ms() + 500)
    );
    assert_eq!(
        f.store
            .circuit(Q, "pay", &CircuitCommand::Reset, "y")
            .unwrap(),
        CircuitState::Closed
    );
    let reasons: Vec<String> = f
        .store
        .events(Q, Some("pay"), 0, 100)
        .unwrap()
        .into_iter()
        .filter_map(|e| e.detail)
        .collect();
    assert!(reasons[0].contains("operator: maintenance"), "{reasons:?}");
}

#[test]
fn max_concurrency_counts_live_leases_across_claims() {
    let Some(f) = fixture() else { return };
    f.store
        .configure_group(Q, "api", &throttle(None, 1.0, Some(2)))
        .unwrap();
    let tasks: Vec<NewTask> = (0..5).map(|_| in_group("api", 0)).collect();
    f.store.enqueue(Q, &tasks).unwrap();
    let a = f.store.claim(Q, "w1", 10, LEASE).unwrap();
    assert_eq!(a.len(), 2);
    assert!(f.store.claim(Q, "w2", 10, LEASE).unwrap().is_empty());
    f.store.complete(a[0].id, a[0].token, b"null").unwrap();
    assert_eq!(f.store.claim(Q, "w2", 10, LEASE).unwrap().len(), 1);
    // A dead worker's slot frees when its lease expires, before any rescue runs.
    f.clock.advance(LEASE + 1);
    assert_eq!(f.store.claim(Q, "w3", 10, LEASE).unwrap().len(), 2);
}

#[test]
fn the_rate_bucket_is_shared_and_refills() {
    let Some(f) = fixture() else { return };
    f.store
        .configure_group(Q, "api", &throttle(Some(2.0), 3.0, None))
        .unwrap();
    let tasks: Vec<NewTask> = (0..10).map(|_| in_group("api", 0)).collect();
    f.store.enqueue(Q, &tasks).unwrap();
    assert_eq!(
        f.store.claim(Q, "w1", 10, LEASE).unwrap().len(),
        3,
        "the burst"
    );
    assert!(f.store.claim(Q, "w2", 10, LEASE).unwrap().is_empty());
    assert_eq!(
        f.store.next_unblock_at(Q).unwrap(),
        Some(f.store.now_ms() + 500)
    );
    f.clock.advance(1_000);
    assert_eq!(f.store.claim(Q, "w2", 10, LEASE).unwrap().len(), 2);
}

#[test]
fn limits_keep_priority_order_across_groups() {
    let Some(f) = fixture() else { return };
    f.store
        .configure_group(Q, "api", &throttle(None, 1.0, Some(1)))
        .unwrap();
    let e = f
        .store
        .enqueue(
            Q,
            &[
                in_group("api", 9),
                in_group("api", 9),
                task("a", 5),
                task("b", 10),
            ],
        )
        .unwrap();
    let claimed = f.store.claim(Q, "w", 3, LEASE).unwrap();
    assert_eq!(ids(&claimed), vec![e[3].id, e[0].id, e[2].id]);
}

/// Claims across many groups, however their tasks are spread (one group holding all the
/// oldest, groups interleaved, priorities mixed), take exactly the best tasks overall:
/// highest priority first, then oldest, as one queue would.
#[test]
fn claims_across_groups_take_the_best_tasks_overall() {
    let Some(f) = fixture() else { return };
    let groups = ["a", "b", "c", "d", "e"];
    let mut batch = Vec::new();
    for i in 0..400usize {
        // "a" gets the first 150 tasks; then round-robin, with a few priorities.
        let group = if i < 150 { "a" } else { groups[i % 5] };
        let priority = match i % 11 {
            0 => 3,
            1 | 2 => 1,
            _ => 0,
        };
        batch.push(in_group(group, priority));
    }
    let enqueued = f.store.enqueue(Q, &batch).unwrap();
    let mut pending: Vec<(i64, i64)> = enqueued
        .iter()
        .zip(&batch)
        .map(|(e, t)| (-t.priority, e.id))
        .collect();
    pending.sort_unstable();
    for limit in [1usize, 3, 7, 40, 2, 90, 13, 250] {
        let got = ids(&f.store.claim(Q, "w", limit, LEASE).unwrap());
        let want: Vec<i64> = pending
            .drain(..limit.min(pending.len()))
            .map(|(_, id)| id)
            .collect();
        assert_eq!(got, want, "claim of {limit}");
    }
    assert!(pending.is_empty());
}

/// A task stamped by a clock ahead of the claimer's is not due for it yet, and must not
/// keep the claim from other groups' tasks that are.
#[test]
fn a_task_not_due_by_this_clock_does_not_block_other_groups() {
    let Some(f) = fixture() else { return };
    let then = f.clock.now_ms();
    // Another process, its clock a second ahead, enqueues after the claimer opened the file
    // (the claimer's clock keeps to the file's timeline only from its next rescue pass).
    let ahead_clock = Arc::new(ManualClock::new(then + 1_000));
    let other = super::open_engine(&f.path, &ahead_clock);
    let ahead = other.enqueue(Q, &[in_group("a", 0)]).unwrap()[0].id;
    let mut due = in_group("b", 0);
    due.run_at = Some(then);
    let due = other.enqueue(Q, &[due]).unwrap()[0].id;
    assert_eq!(ids(&f.store.claim(Q, "w", 1, LEASE).unwrap()), vec![due]);
    f.clock.advance(1_000);
    assert_eq!(ids(&f.store.claim(Q, "w", 1, LEASE).unwrap()), vec![ahead]);
}

#[test]
fn paused_groups_and_queues_are_skipped() {
    let Some(f) = fixture() else { return };
    let e = f
        .store
        .enqueue(Q, &[in_group("pay", 0), task("x", 0)])
        .unwrap();
    assert!(f.store.set_group_paused(Q, "pay", true).unwrap());
    assert!(
        !f.store.set_group_paused(Q, "pay", true).unwrap(),
        "already paused"
    );
    assert_eq!(
        ids(&f.store.claim(Q, "w", 10, LEASE).unwrap()),
        vec![e[1].id]
    );
    assert!(f.store.set_queue_paused(Q, true).unwrap());
    f.store.set_group_paused(Q, "pay", false).unwrap();
    assert!(f.store.claim(Q, "w", 10, LEASE).unwrap().is_empty());
    f.store.set_queue_paused(Q, false).unwrap();
    assert_eq!(
        ids(&f.store.claim(Q, "w", 10, LEASE).unwrap()),
        vec![e[0].id]
    );
}

/// A resumed queue leaves no row behind: a queue paused by mistake disappears once resumed.
#[test]
fn resuming_a_queue_forgets_it() {
    let Some(f) = fixture() else { return };
    assert!(f.store.set_queue_paused("typo", true).unwrap());
    assert!(f.store.queue_names().unwrap().contains(&"typo".to_string()));
    assert!(f.store.set_queue_paused("typo", false).unwrap());
    assert!(
        !f.store.set_queue_paused("typo", false).unwrap(),
        "not paused"
    );
    assert!(!f.store.queue_names().unwrap().contains(&"typo".to_string()));
}

/// Forgetting a group drops its settings, pause and breaker; refused while it has
/// unfinished tasks unless forced.
#[test]
fn forgetting_a_group() {
    let Some(f) = fixture() else { return };
    f.store.configure_group(Q, "api", &breaker_only()).unwrap();
    f.store.set_group_paused(Q, "api", true).unwrap();
    f.store
        .circuit(Q, "api", &CircuitCommand::Open { duration_ms: None }, "x")
        .unwrap();
    let e = f.store.enqueue(Q, &[in_group("api", 0)]).unwrap();
    assert!(matches!(
        f.store.forget_group(Q, "api", false),
        Err(crate::Error::Refused(_))
    ));
    assert!(f.store.group_info(Q, "api").unwrap().paused, "unchanged");
    f.store.cancel(Q, e[0].id).unwrap();
    assert!(f.store.forget_group(Q, "api", false).unwrap());
    assert!(
        !f.store.forget_group(Q, "api", false).unwrap(),
        "nothing left"
    );
    let g = f.store.group_info(Q, "api").unwrap();
    assert!(!g.paused && g.config.breaker.is_none());
    assert_eq!(g.circuit, CircuitState::Closed);
    assert!(f.store.group_names(Q).unwrap().is_empty());
    f.store.set_group_paused(Q, "busy", true).unwrap();
    f.store.enqueue(Q, &[in_group("busy", 0)]).unwrap();
    assert!(f.store.forget_group(Q, "busy", true).unwrap(), "forced");
}

#[test]
fn a_retry_after_holds_the_group() {
    let Some(f) = fixture() else { return };
    f.store
        .configure_group(Q, "api", &throttle(None, 1.0, Some(5)))
        .unwrap();
    f.store
        .enqueue(Q, &[in_group("api", 0), in_group("api", 0)])
        .unwrap();
    let one = f.store.claim(Q, "w", 1, LEASE).unwrap();
    let hold = FailureImpact {
        counts: false,
        hold_ms: Some(2_000),
    };
    fail_all(&f, &one, hold);
    assert_eq!(
        f.store.get(Q, one[0].id).unwrap().attempts,
        0,
        "attempt given back"
    );
    assert!(f.store.claim(Q, "w", 10, LEASE).unwrap().is_empty());
    assert_eq!(
        f.store.next_unblock_at(Q).unwrap(),
        Some(f.store.now_ms() + 2_000)
    );
    f.clock.advance(2_000);
    assert_eq!(f.store.claim(Q, "w", 10, LEASE).unwrap().len(), 2);
}

#[test]
fn adaptive_cap_halves_on_errors_and_grows_back() {
    let Some(f) = fixture() else { return };
    let config = GroupConfig {
        breaker: None,
        throttle: Some(ThrottleConfig {
            rate: None,
            burst: 1.0,
            max_concurrency: Some(8),
            adaptive: Some(Adaptive {
                min_concurrency: 1,
                target_latency_ms: None,
                error_rate: 0.2,
                cooldown_ms: 0,
            }),
        }),
    };
    f.store.configure_group(Q, "api", &config).unwrap();
    let tasks: Vec<NewTask> = (0..40).map(|_| in_group("api", 0)).collect();
    f.store.enqueue(Q, &tasks).unwrap();
    let batch = f.store.claim(Q, "w", 8, LEASE).unwrap();
    assert_eq!(batch.len(), 8);
    fail_all(&f, &batch, FailureImpact::default());
    assert_eq!(
        f.store.group_info(Q, "api").unwrap().concurrency_limit,
        Some(4)
    );
    for _ in 0..3 {
        let batch = f.store.claim(Q, "w", 8, LEASE).unwrap();
        assert!(batch.len() <= 5);
        for t in &batch {
            f.store.complete(t.id, t.token, b"null").unwrap();
        }
    }
    let limit = f
        .store
        .group_info(Q, "api")
        .unwrap()
        .concurrency_limit
        .unwrap();
    assert!(limit > 4, "grew back: {limit}");
    let kinds: Vec<String> = f
        .store
        .events(Q, Some("api"), 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.iter().all(|k| k == "throttle_changed") && !kinds.is_empty());
}

#[test]
fn aging_raises_waiting_tasks_up_to_the_cap() {
    let Some(f) = fixture() else { return };
    let e = f.store.enqueue(Q, &[task("old", 0)]).unwrap();
    f.clock.advance(1_000);
    let fresh = f.store.enqueue(Q, &[task("new", 1)]).unwrap();
    assert_eq!(f.store.age_priorities(Q, 1_000, 2, 3).unwrap(), 1);
    assert_eq!(
        f.store.age_priorities(Q, 1_000, 2, 3).unwrap(),
        0,
        "raised just now"
    );
    f.clock.advance(1_000);
    assert_eq!(f.store.age_priorities(Q, 1_000, 2, 3).unwrap(), 2);
    assert_eq!(f.store.get(Q, e[0].id).unwrap().priority, 3, "capped");
    let claimed = f.store.claim(Q, "w", 1, LEASE).unwrap();
    assert_eq!(ids(&claimed), vec![e[0].id]);
    assert_eq!(
        f.store.get(Q, fresh[0].id).unwrap().status,
        TaskStatus::Pending
    );
}
