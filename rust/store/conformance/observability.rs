//! Metrics, task events, worker registrations and their retention.

use super::{LEASE, Q, fixture, task};
use crate::metrics::Counter;
use crate::store::ObservabilityRetention;
use crate::task::{FailAction, Outcome};

#[test]
fn metrics_count_every_outcome_and_keep_run_times() {
    let Some(f) = fixture() else { return };
    f.store
        .enqueue(Q, &[task("a", 0), task("b", 0), task("c", 0)])
        .unwrap();
    f.clock.advance(250);
    let t = f.store.claim(Q, "w", 3, LEASE).unwrap();
    let outcomes: Vec<Outcome> = t
        .iter()
        .enumerate()
        .map(|(i, t)| match i {
            2 => Outcome::Failed {
                id: t.id,
                token: t.token,
                error: "{}".into(),
                action: FailAction::Retry { delay_ms: 0 },
                impact: Default::default(),
                run_us: Some(9_000),
            },
            _ => Outcome::Completed {
                id: t.id,
                token: t.token,
                result: b"null".to_vec(),
                run_us: Some(1_000 * (i as u64 + 1)),
            },
        })
        .collect();
    f.store.finish_many(&outcomes).unwrap();
    let since = f.store.now_ms() - 60_000;
    assert!(
        f.store.metrics(Q, since, 86_400_000).unwrap().is_empty(),
        "not flushed yet"
    );
    f.store.flush_metrics().unwrap();
    f.store.flush_metrics().unwrap(); // nothing new: adds nothing
    let by_group = f.store.metrics(Q, since, 86_400_000).unwrap();
    let s = &by_group["default"];
    let counts: Vec<u64> = [
        Counter::Enqueued,
        Counter::Started,
        Counter::Completed,
        Counter::Retried,
    ]
    .into_iter()
    .map(|c| s.count(c))
    .collect();
    assert_eq!(counts, [3, 3, 2, 1]);
    assert_eq!(s.wait.count(), 3);
    let wait = s.wait.quantile_us(0.5) as f64;
    assert!(
        (wait - 250_000.0).abs() < 250_000.0 * 0.03,
        "due to claim: {wait} µs"
    );
    assert_eq!(s.run.count(), 3);
    assert_eq!(s.run.max_us(), 9_000);
    // Hours hold the same figures, for windows past the raw retention.
    let hours = f.store.metrics(Q, since, 1).unwrap();
    assert_eq!(hours["default"].count(Counter::Completed), 2);
    assert_eq!(
        f.store.metrics_totals()[Q]["default"].count(Counter::Enqueued),
        3
    );
}

#[test]
fn failures_progress_and_cancels_are_events() {
    let Some(f) = fixture() else { return };
    let e = f.store.enqueue(Q, &[task("a", 0), task("b", 0)]).unwrap();
    f.store.cancel(Q, e[1].id).unwrap();
    let t = f.store.claim(Q, "w", 1, LEASE).unwrap().remove(0);
    f.store
        .progress(t.id, t.token, 0.4, Some("resizing"))
        .unwrap();
    f.store
        .fail(t.id, t.token, r#"{"type":"E"}"#, FailAction::Dead)
        .unwrap();
    let events = f.store.events(Q, None, 0, 100).unwrap();
    let kinds: Vec<(&str, Option<i64>)> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.task_id))
        .collect();
    assert_eq!(
        kinds,
        [
            ("cancelled", Some(e[1].id)),
            ("progress", Some(t.id)),
            ("failed", Some(t.id)),
            ("dead", Some(t.id)),
        ]
    );
    assert!(
        events[1]
            .detail
            .as_deref()
            .unwrap()
            .contains(r#""message":"resizing""#)
    );
    assert_eq!(f.store.get(Q, t.id).unwrap().progress, Some(0.4));
    let after = f.store.events(Q, None, events[1].id, 100).unwrap();
    assert_eq!(after.len(), 2, "a cursor resumes after the last id seen");
}

#[test]
fn a_failure_event_holds_its_error_as_an_object() {
    let Some(f) = fixture() else { return };
    f.store.enqueue(Q, &[task("a", 0)]).unwrap();
    let t = f.store.claim(Q, "w", 1, LEASE).unwrap().remove(0);
    let error = r#"{"type":"E","message":"boom","traceback":null}"#;
    f.store
        .fail(t.id, t.token, error, FailAction::Dead)
        .unwrap();
    let events = f.store.events(Q, None, 0, 100).unwrap();
    assert_eq!(events[0].kind, "failed");
    assert_eq!(
        events[0].detail.as_deref(),
        Some(r#"{"attempt":1,"error":{"type":"E","message":"boom","traceback":null}}"#)
    );
}

#[test]
fn the_latest_events_are_filtered_by_kind_before_the_limit() {
    let Some(f) = fixture() else { return };
    let e = f.store.enqueue(Q, &[task("a", 0), task("b", 0)]).unwrap();
    let t = f.store.claim(Q, "w", 1, LEASE).unwrap().remove(0);
    f.store.fail(t.id, t.token, "{}", FailAction::Dead).unwrap();
    f.store.cancel(Q, e[1].id).unwrap();
    for _ in 0..5 {
        f.store.set_queue_paused(Q, true).unwrap();
        f.store.set_queue_paused(Q, false).unwrap();
    }
    let all = f.store.events(Q, None, 0, 100).unwrap();
    let last = all.last().unwrap().id;
    let dead = f.store.latest_events(Q, &["dead".into()], last, 2).unwrap();
    assert_eq!(
        dead.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["dead"]
    );
    let two: Vec<_> = ["dead", "cancelled"].map(String::from).into();
    let both = f.store.latest_events(Q, &two, last, 2).unwrap();
    assert_eq!(
        both.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["dead", "cancelled"],
        "oldest first"
    );
    let newest = f.store.latest_events(Q, &[], last, 3).unwrap();
    assert_eq!(newest.last().unwrap().id, last);
    assert_eq!(newest.len(), 3);
    let before = f.store.latest_events(Q, &[], dead[0].id, 1).unwrap();
    assert_eq!(before[0].id, dead[0].id, "nothing after up_to");
}

#[test]
fn workers_register_renew_and_expire() {
    let Some(f) = fixture() else { return };
    let w = super::worker_info("host:1:ab");
    f.store.worker_seen(&w).unwrap();
    f.store.enqueue(Q, &[task("a", 0), task("b", 0)]).unwrap();
    f.store.claim(Q, &w.id, 1, 30_000).unwrap();
    f.store.claim(Q, "other", 1, 30_000).unwrap();
    assert_eq!(f.store.workers(Q).unwrap()[0].running, 1, "its own leases");
    f.clock.advance(5_000);
    f.store.worker_seen(&w).unwrap();
    let seen = f.store.workers(Q).unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].last_seen - seen[0].started_at, 5_000);
    f.store.worker_stopped(&w.id).unwrap();
    assert!(f.store.workers(Q).unwrap()[0].stopped_at.is_some());
    f.clock.advance(2 * 86_400_000);
    assert!(
        f.store
            .prune_observability(&ObservabilityRetention::default())
            .unwrap()
            >= 1
    );
    assert!(f.store.workers(Q).unwrap().is_empty());
}

#[test]
fn retention_prunes_old_events_and_metrics() {
    let Some(f) = fixture() else { return };
    let e = f.store.enqueue(Q, &[task("a", 0)]).unwrap();
    f.store.cancel(Q, e[0].id).unwrap();
    f.store.flush_metrics().unwrap();
    let keep = ObservabilityRetention::default();
    assert_eq!(f.store.prune_observability(&keep).unwrap(), 0, "all fresh");
    f.clock.advance(keep.raw_metrics_ms + 20_000);
    let since = f.store.now_ms() - keep.raw_metrics_ms - 60_000;
    let hourly_before = f
        .store
        .metrics(Q, since - 86_400_000, keep.raw_metrics_ms)
        .unwrap();
    assert!(
        f.store.prune_observability(&keep).unwrap() >= 2,
        "raw intervals went"
    );
    assert_eq!(
        f.store.events(Q, None, 0, 10).unwrap().len(),
        1,
        "events stay a week"
    );
    let hourly = f
        .store
        .metrics(Q, since - 86_400_000, keep.raw_metrics_ms)
        .unwrap();
    assert_eq!(hourly, hourly_before, "hours stay a month");
    f.clock.advance(keep.hourly_metrics_ms);
    f.store.prune_observability(&keep).unwrap();
    assert!(f.store.events(Q, None, 0, 10).unwrap().is_empty());
    assert!(
        f.store
            .metrics(Q, 0, keep.raw_metrics_ms)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn health_figures() {
    let Some(f) = fixture() else { return };
    f.store.enqueue(Q, &[task("a", 0), task("b", 0)]).unwrap();
    let enqueued_at = f.store.now_ms();
    f.clock.advance(1_000);
    assert_eq!(f.store.oldest_due(Q).unwrap(), Some(enqueued_at));
    let t = f.store.claim(Q, "w", 1, LEASE).unwrap().remove(0);
    f.store.fail(t.id, t.token, "{}", FailAction::Dead).unwrap();
    assert_eq!(f.store.dead_since(Q, enqueued_at).unwrap(), 1);
    assert_eq!(f.store.dead_since(Q, f.store.now_ms() + 1).unwrap(), 0);
}

#[test]
fn metric_series_gives_each_interval_by_group_or_summed() {
    let Some(f) = fixture() else { return };
    let start = f.store.now_ms();
    let mut b = task("b", 0);
    b.resource_group = "other".into();
    f.store.enqueue(Q, &[task("a", 0), b]).unwrap();
    f.store.flush_metrics().unwrap();
    f.clock.advance(20_000);
    f.store.enqueue(Q, &[task("c", 0)]).unwrap();
    f.store.flush_metrics().unwrap();
    let since = start - 3_600_000;
    let raw = |group| {
        f.store
            .metric_series(Q, group, "enqueued", 10_000, since)
            .unwrap()
    };
    let first = start - start.rem_euclid(10_000);
    assert_eq!(raw(None), [(first, 2.0), (first + 20_000, 1.0)]);
    assert_eq!(raw(Some("other")), [(first, 1.0)]);
    let hours = f
        .store
        .metric_series(Q, None, "enqueued", 3_600_000, since)
        .unwrap();
    assert_eq!(hours.iter().map(|h| h.1).sum::<f64>(), 3.0);
}

#[test]
fn a_producer_flushes_its_arrivals_an_interval_after_its_last_flush() {
    let Some(f) = fixture() else { return };
    let since = f.store.now_ms() - 60_000;
    let enqueued = || {
        f.store
            .metric_series(Q, None, "enqueued", 10_000, since)
            .unwrap()
            .iter()
            .map(|r| r.1)
            .sum::<f64>()
    };
    f.store.enqueue(Q, &[task("a", 0)]).unwrap();
    f.clock.advance(5_000);
    f.store.enqueue(Q, &[task("b", 0)]).unwrap();
    assert_eq!(enqueued(), 0.0, "within an interval of the first: not yet");
    f.clock.advance(5_000);
    f.store.enqueue(Q, &[task("c", 0)]).unwrap();
    assert_eq!(enqueued(), 3.0, "no worker flushed them: the enqueue did");
    f.store.enqueue(Q, &[task("d", 0)]).unwrap();
    f.store.close();
    assert_eq!(enqueued(), 4.0, "closing flushes what is left");
}

#[test]
fn a_duty_turn_is_taken_once_per_period_and_saved_only_by_its_holder() {
    use crate::store::TurnEvent;
    let Some(f) = fixture() else { return };
    let other = super::open_engine(&f.path, &f.clock);
    let (fence, state) = f.store.take_turn(Q, "alerts", 5_000).unwrap().unwrap();
    assert_eq!(state, "{}");
    assert!(
        other.take_turn(Q, "alerts", 5_000).unwrap().is_none(),
        "taken"
    );
    assert!(
        other.take_turn(Q, "other", 5_000).unwrap().is_some(),
        "duties apart"
    );
    let fired = TurnEvent {
        group: Some("g".into()),
        kind: "alert_fired".into(),
        detail: "{\"alert\": \"slow\"}".into(),
    };
    assert!(
        f.store
            .end_turn(
                Q,
                "alerts",
                fence,
                "{\"a\":1}",
                std::slice::from_ref(&fired)
            )
            .unwrap()
    );
    f.clock.advance(5_000);
    let (next, state) = other.take_turn(Q, "alerts", 5_000).unwrap().unwrap();
    assert_eq!((next, state.as_str()), (fence + 1, "{\"a\":1}"));
    // The first holder's late save is refused: the turn is no longer its own.
    assert!(
        !f.store
            .end_turn(Q, "alerts", fence, "{}", &[fired])
            .unwrap()
    );
    let kinds: Vec<String> = f
        .store
        .events(Q, None, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["alert_fired"]);
}

#[test]
fn metric_histograms_give_each_intervals_durations() {
    let Some(f) = fixture() else { return };
    let start = f.store.now_ms();
    let mut b = task("b", 0);
    b.resource_group = "other".into();
    f.store.enqueue(Q, &[task("a", 0), b]).unwrap();
    f.clock.advance(3_000);
    f.store.claim(Q, "w", 2, LEASE).unwrap();
    f.store.flush_metrics().unwrap();
    f.clock.advance(20_000);
    f.store.enqueue(Q, &[task("c", 0)]).unwrap();
    f.clock.advance(1_000);
    f.store.claim(Q, "w", 1, LEASE).unwrap();
    f.store.flush_metrics().unwrap();
    let rows = f
        .store
        .metric_histograms(Q, None, "wait", 10_000, start - 60_000)
        .unwrap();
    let seen: Vec<(u64, u64)> = rows
        .iter()
        .map(|(_, h)| (h.count(), h.max_us() / 1_000_000))
        .collect();
    assert_eq!(seen, [(2, 3), (1, 1)], "merged over groups, per interval");
    let other = f
        .store
        .metric_histograms(Q, Some("other"), "wait", 10_000, start - 60_000)
        .unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].1.count(), 1);
}

/// Each task name's run times are stored apart (`task_run:<name>`), and a process's own
/// figures (`record_samples`) too; another engine on the same store reads them by prefix,
/// and the groups' series do not show them.
#[test]
fn per_task_run_times_and_samples_are_stored_by_name() {
    let Some(f) = fixture() else { return };
    let slow = crate::task::NewTask {
        resource_group: "g".into(),
        ..task("slow", 0)
    };
    f.store
        .enqueue(Q, &[task("fast", 0), task("fast", 0), slow])
        .unwrap();
    let claimed = f.store.claim(Q, "w", 3, LEASE).unwrap();
    let outcomes: Vec<Outcome> = claimed
        .iter()
        .map(|t| Outcome::Completed {
            id: t.id,
            token: t.token,
            result: b"null".to_vec(),
            run_us: Some(if t.name == "slow" { 500_000 } else { 1_000 }),
        })
        .collect();
    f.store.finish_many(&outcomes).unwrap();
    f.store
        .record_samples(Q, "g", "profile:stage:claim", &[10, 20]);
    f.store.flush_metrics().unwrap();
    let since = f.store.now_ms() - 60_000;
    let other = super::open_engine(&f.path, &f.clock);
    let runs = other
        .named_metrics(Q, "task_run:", since, 86_400_000)
        .unwrap();
    let got: Vec<(&str, &str, u64, u64)> = runs
        .iter()
        .map(|(g, n, h)| (g.as_str(), n.as_str(), h.count(), h.max_us()))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0].0, got[0].1, got[0].2),
        ("default", "task_run:fast", 2)
    );
    assert_eq!((got[1].0, got[1].1, got[1].2), ("g", "task_run:slow", 1));
    let rel = |a: u64, b: u64| (a as f64 - b as f64).abs() / b as f64;
    assert!(
        rel(got[0].3, 1_000) < 0.05 && rel(got[1].3, 500_000) < 0.05,
        "{got:?}"
    );
    let samples = other
        .named_metrics(Q, "profile:", since, 86_400_000)
        .unwrap();
    assert_eq!(samples.len(), 1);
    assert_eq!((samples[0].0.as_str(), samples[0].2.count()), ("g", 2));
    let groups = other.metrics(Q, since, 86_400_000).unwrap();
    let mut names: Vec<&String> = groups.keys().collect();
    names.sort();
    assert_eq!(names, ["default", "g"]);
}
