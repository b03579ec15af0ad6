//! The behaviour every storage engine must have, on a manual clock. Generic over the engine:
//! each engine includes this suite as a module of its own (`#[path]`) and provides
//! `conformance_engine(path, clock)` beside it, so the same tests run once per engine.

use std::sync::Arc;

use crate::clock::{Clock, ManualClock};
use crate::error::Error;
use crate::policy::retention::{Keep, Retention};
use crate::store::Engine;
use crate::task::{FailAction, NewTask, TaskStatus};

mod cache;
mod clock_steps;
mod groups;
mod import;
mod listing;
mod no_processor;
mod observability;

pub(super) const Q: &str = "default";
pub(super) const LEASE: i64 = 30_000;

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn Engine>,
    /// Where the engine keeps its data, for a second process's engine on the same store.
    pub path: std::path::PathBuf,
}

/// A fresh store of the engine under test, on a manual clock; `None` (said loudly) when
/// the engine cannot run this test here: no server for it, or a behaviour the engine lists
/// as not yet supported (`conformance_skips`).
pub(super) fn fixture() -> Option<Fixture> {
    if !super::conformance_available() {
        return None;
    }
    let test = std::thread::current().name().unwrap_or("").to_string();
    if let Some(skip) = super::conformance_skips()
        .iter()
        .find(|s| test.ends_with(&format!("::{s}")))
    {
        eprintln!("{test}: SKIPPED, not yet supported by this engine ({skip})");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let path = dir.path().join("q.db");
    let store = open_engine(&path, &clock);
    Some(Fixture {
        _dir: dir,
        clock,
        store,
        path,
    })
}

/// The engine under test on the store at `path` with `clock`: another process's view of
/// the same store when `path` is a fixture's.
pub(super) fn open_engine(path: &std::path::Path, clock: &Arc<ManualClock>) -> Arc<dyn Engine> {
    super::conformance_engine(path, clock.clone())
}

pub(crate) use crate::store::testing::task;

/// Lets `ms` pass (at least a lease) with this process's rescuer watching from half a lease
/// on, as a worker's does every second; returns what its last pass took over.
pub(super) fn rescue_after(f: &Fixture, ms: i64) -> Vec<(i64, TaskStatus)> {
    assert!(ms >= LEASE);
    f.clock.advance(LEASE / 2);
    assert!(
        f.store.rescue_expired(Q).unwrap().is_empty(),
        "nothing expired yet"
    );
    f.clock.advance(ms - LEASE / 2);
    f.store.rescue_expired(Q).unwrap()
}

/// A worker's registration, as a worker process sends it (host "host", pid 1, 8 threads).
pub(super) fn worker_info(id: &str) -> crate::store::WorkerInfo {
    crate::store::WorkerInfo {
        id: id.into(),
        queue: Q.into(),
        hostname: "host".into(),
        pid: 1,
        concurrency: 8,
        pool: "thread".into(),
        started_at: 0,
        last_seen: 0,
        stopped_at: None,
        running: 0,
    }
}

pub(super) fn ids(claimed: &[crate::task::ClaimedTask]) -> Vec<i64> {
    claimed.iter().map(|t| t.id).collect()
}

#[test]
fn higher_priority_first_then_fifo() {
    let Some(f) = fixture() else { return };
    let e = f
        .store
        .enqueue(Q, &[task("a", 0), task("b", 5), task("c", 0), task("d", 5)])
        .unwrap();
    let claimed = f.store.claim(Q, "w", 10, LEASE).unwrap();
    assert_eq!(ids(&claimed), vec![e[1].id, e[3].id, e[0].id, e[2].id]);
}

#[test]
fn fifo_survives_deletions_because_ids_are_never_reused() {
    let Some(f) = fixture() else { return };
    let first = f.store.enqueue(Q, &[task("a", 0), task("b", 0)]).unwrap();
    // Finish and prune the newest task: without AUTOINCREMENT its id would come back.
    let claimed = f.store.claim(Q, "w", 2, LEASE).unwrap();
    for t in &claimed {
        f.store.complete(t.id, t.token, b"null").unwrap();
    }
    let keep_none = Keep {
        max_age_ms: None,
        max_count: Some(0),
    };
    assert_eq!(
        f.store
            .prune(
                Q,
                &Retention {
                    completed: keep_none,
                    dead: keep_none
                }
            )
            .unwrap(),
        2
    );
    let later = f.store.enqueue(Q, &[task("c", 0), task("d", 0)]).unwrap();
    assert!(later[0].id > first[1].id);
    assert_eq!(
        ids(&f.store.claim(Q, "w", 1, LEASE).unwrap()),
        vec![later[0].id]
    );
}

#[test]
fn delayed_tasks_are_not_claimed_early() {
    let Some(f) = fixture() else { return };
    let mut delayed = task("later", 100);
    delayed.run_at = Some(f.clock.now_ms() + 5_000);
    let e = f.store.enqueue(Q, &[delayed]).unwrap();
    assert!(f.store.claim(Q, "w", 10, LEASE).unwrap().is_empty());
    assert_eq!(
        f.store.next_run_at(Q).unwrap(),
        Some(f.clock.now_ms() + 5_000)
    );
    f.clock.advance(4_999);
    assert!(f.store.claim(Q, "w", 10, LEASE).unwrap().is_empty());
    f.clock.advance(1);
    assert_eq!(
        ids(&f.store.claim(Q, "w", 10, LEASE).unwrap()),
        vec![e[0].id]
    );
}

/// A delayed task or a retry that comes due takes its place among the ready tasks by
/// priority (and id), as if it had been ready all along.
#[test]
fn tasks_that_come_due_are_claimed_by_priority() {
    let Some(f) = fixture() else { return };
    let mut urgent_later = task("urgent", 9);
    urgent_later.run_at = Some(f.clock.now_ms() + 1_000);
    let urgent = f.store.enqueue(Q, &[urgent_later]).unwrap()[0].id;
    let retried = f.store.enqueue(Q, &[task("retried", 5)]).unwrap()[0].id;
    let t = f.store.claim(Q, "w", 1, LEASE).unwrap().remove(0);
    assert_eq!(t.id, retried);
    f.store
        .fail(t.id, t.token, "{}", FailAction::Retry { delay_ms: 2_000 })
        .unwrap();
    let plain = f
        .store
        .enqueue(Q, &[task("plain", 0), task("plain", 0)])
        .unwrap();
    assert_eq!(
        ids(&f.store.claim(Q, "w", 1, LEASE).unwrap()),
        vec![plain[0].id]
    );
    f.clock.advance(1_000);
    assert_eq!(
        f.store.oldest_due(Q).unwrap(),
        Some(f.clock.now_ms() - 1_000)
    );
    assert_eq!(ids(&f.store.claim(Q, "w", 1, LEASE).unwrap()), vec![urgent]);
    assert_eq!(
        f.store.next_run_at(Q).unwrap(),
        Some(f.clock.now_ms() + 1_000)
    );
    f.clock.advance(1_000);
    assert_eq!(
        ids(&f.store.claim(Q, "w", 10, LEASE).unwrap()),
        vec![retried, plain[1].id]
    );
}

/// A paused queue starts nothing, so an idle worker has no delayed task to wake for.
#[test]
fn a_paused_queue_has_no_next_run() {
    let Some(f) = fixture() else { return };
    let mut later = task("later", 0);
    later.run_at = Some(f.clock.now_ms() + 5_000);
    f.store.enqueue(Q, &[later]).unwrap();
    f.store.set_queue_paused(Q, true).unwrap();
    f.clock.advance(6_000);
    assert_eq!(f.store.next_run_at(Q).unwrap(), None);
    f.store.set_queue_paused(Q, false).unwrap();
    assert_eq!(
        f.store.next_run_at(Q).unwrap(),
        Some(f.clock.now_ms() - 1_000)
    );
}

/// With no worker running nothing is claimed, and a delayed task that came due is still
/// reported as waiting since its run_at.
#[test]
fn the_oldest_due_task_counts_delayed_ones_that_came_due() {
    let Some(f) = fixture() else { return };
    let mut later = task("later", 0);
    later.run_at = Some(f.clock.now_ms() + 5_000);
    f.store.enqueue(Q, &[later]).unwrap();
    assert_eq!(f.store.oldest_due(Q).unwrap(), None);
    f.clock.advance(7_000);
    assert_eq!(
        f.store.oldest_due(Q).unwrap(),
        Some(f.clock.now_ms() - 2_000)
    );
}

#[test]
fn a_claim_counts_an_attempt_and_is_exclusive() {
    let Some(f) = fixture() else { return };
    f.store.enqueue(Q, &[task("a", 0)]).unwrap();
    let first = f.store.claim(Q, "w1", 10, LEASE).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);
    assert!(f.store.claim(Q, "w2", 10, LEASE).unwrap().is_empty());
    let rec = f.store.get(Q, first[0].id).unwrap();
    assert_eq!(rec.status, TaskStatus::Running);
    assert_eq!(rec.lease_owner.as_deref(), Some("w1"));
    assert_eq!(rec.lease_expires_at, Some(f.clock.now_ms() + LEASE));
}

#[test]
fn completion_is_fenced_by_the_lease_token() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[task("a", 0)]).unwrap()[0].id;
    let stale = f.store.claim(Q, "w1", 1, LEASE).unwrap().remove(0);
    assert_eq!(rescue_after(&f, LEASE), vec![(id, TaskStatus::Pending)]);
    let fresh = f.store.claim(Q, "w2", 1, LEASE).unwrap().remove(0);
    assert_ne!(stale.token, fresh.token);
    assert!(matches!(
        f.store.complete(id, stale.token, b"1"),
        Err(Error::LeaseLost(_))
    ));
    assert!(matches!(
        f.store.heartbeat(&[(id, stale.token)], LEASE).unwrap()[..],
        [false]
    ));
    assert!(matches!(
        f.store.progress(id, stale.token, 0.5, None),
        Err(Error::LeaseLost(_))
    ));
    assert!(matches!(
        f.store.fail(id, stale.token, "{}", FailAction::Dead),
        Err(Error::LeaseLost(_))
    ));
    f.store.complete(id, fresh.token, b"2").unwrap();
    let rec = f.store.get(Q, id).unwrap();
    assert_eq!(rec.status, TaskStatus::Completed);
    assert_eq!(rec.result.as_deref(), Some(&b"2"[..]));
    assert!(matches!(
        f.store.complete(id, fresh.token, b"3"),
        Err(Error::LeaseLost(_))
    ));
}

#[test]
fn heartbeats_extend_the_lease() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[task("a", 0)]).unwrap()[0].id;
    let t = f.store.claim(Q, "w", 1, LEASE).unwrap().remove(0);
    for _ in 0..5 {
        f.clock.advance(LEASE - 1);
        assert_eq!(
            f.store.heartbeat(&[(id, t.token)], LEASE).unwrap(),
            vec![true]
        );
        assert!(f.store.rescue_expired(Q).unwrap().is_empty());
    }
    assert_eq!(rescue_after(&f, LEASE), vec![(id, TaskStatus::Pending)]);
}

/// A heartbeat of many leases (more than one transaction's worth in SQLite) answers each
/// in order, a lost one included, and renews every one still held.
#[test]
fn a_large_heartbeat_answers_every_lease_in_order() {
    let Some(f) = fixture() else { return };
    let tasks: Vec<_> = (0..1_300).map(|_| task("a", 0)).collect();
    f.store.enqueue(Q, &tasks).unwrap();
    let claimed = f.store.claim(Q, "w", 2_000, LEASE).unwrap();
    assert_eq!(claimed.len(), 1_300);
    let mut leases: Vec<_> = claimed.iter().map(|t| (t.id, t.token)).collect();
    leases[700].1 += 1; // a token that is not the lease's
    f.clock.advance(LEASE / 2);
    assert!(f.store.rescue_expired(Q).unwrap().is_empty()); // the rescuer starts watching
    f.clock.advance(LEASE - 1 - LEASE / 2);
    let held = f.store.heartbeat(&leases, LEASE).unwrap();
    assert_eq!(held.len(), 1_300);
    assert!(held.iter().enumerate().all(|(i, &h)| h == (i != 700)));
    f.clock.advance(2);
    let rescued = f.store.rescue_expired(Q).unwrap();
    assert_eq!(rescued, vec![(claimed[700].id, TaskStatus::Pending)]);
}

#[test]
fn rescue_kills_tasks_out_of_attempts() {
    let Some(f) = fixture() else { return };
    let mut one_shot = task("a", 0);
    one_shot.max_attempts = 1;
    let id = f.store.enqueue(Q, &[one_shot]).unwrap()[0].id;
    f.store.claim(Q, "w", 1, LEASE).unwrap();
    assert_eq!(rescue_after(&f, LEASE), vec![(id, TaskStatus::Dead)]);
    let rec = f.store.get(Q, id).unwrap();
    assert!(rec.last_error.unwrap().contains("LeaseExpired"));
    assert!(rec.finished_at.is_some());
}

#[test]
fn failures_retry_until_attempts_run_out() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[task("a", 0)]).unwrap()[0].id;
    for attempt in 1..=3 {
        let t = f.store.claim(Q, "w", 1, LEASE).unwrap().remove(0);
        assert_eq!(t.attempt, attempt);
        let status = f
            .store
            .fail(
                id,
                t.token,
                "{\"n\":1}",
                FailAction::Retry { delay_ms: 1000 },
            )
            .unwrap();
        if attempt < 3 {
            assert_eq!(status, TaskStatus::Pending);
            assert!(
                f.store.claim(Q, "w", 1, LEASE).unwrap().is_empty(),
                "backoff not honoured"
            );
            f.clock.advance(1000);
        } else {
            assert_eq!(status, TaskStatus::Dead);
        }
    }
    let history = f.store.history(Q, id).unwrap();
    let path: Vec<_> = history.iter().map(|t| t.to).collect();
    use TaskStatus::*;
    assert_eq!(
        path,
        vec![Pending, Running, Pending, Running, Pending, Running, Dead]
    );
    assert_eq!(history[2].error.as_deref(), Some("{\"n\":1}"));
    assert_eq!(history[1].worker.as_deref(), Some("w"));
}

#[test]
fn fatal_failure_is_dead_at_once_and_requeue_revives() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[task("a", 0)]).unwrap()[0].id;
    let t = f.store.claim(Q, "w", 1, LEASE).unwrap().remove(0);
    assert_eq!(
        f.store.fail(id, t.token, "{}", FailAction::Dead).unwrap(),
        TaskStatus::Dead
    );
    assert!(matches!(
        f.store.cancel(Q, id),
        Err(Error::InvalidTransition {
            status: TaskStatus::Dead,
            ..
        })
    ));
    f.store.requeue(Q, id).unwrap();
    let rec = f.store.get(Q, id).unwrap();
    assert_eq!((rec.status, rec.attempts), (TaskStatus::Pending, 0));
    assert!(matches!(
        f.store.requeue(Q, id),
        Err(Error::InvalidTransition {
            status: TaskStatus::Pending,
            ..
        })
    ));
}

#[test]
fn cancel_only_pending() {
    let Some(f) = fixture() else { return };
    let e = f.store.enqueue(Q, &[task("a", 0), task("b", 0)]).unwrap();
    f.store.cancel(Q, e[1].id).unwrap();
    assert_eq!(
        ids(&f.store.claim(Q, "w", 10, LEASE).unwrap()),
        vec![e[0].id]
    );
    assert!(matches!(
        f.store.cancel(Q, e[0].id),
        Err(Error::InvalidTransition { .. })
    ));
    assert!(matches!(
        f.store.cancel(Q, 999),
        Err(Error::UnknownTask(999))
    ));
    assert!(matches!(f.store.get(Q, 999), Err(Error::UnknownTask(999))));
}

#[test]
fn unique_key_returns_the_unfinished_task() {
    let Some(f) = fixture() else { return };
    let mut a = task("a", 0);
    a.unique_key = Some("k".into());
    let first = f.store.enqueue(Q, &[a.clone()]).unwrap()[0];
    assert!(first.created);
    let again = f.store.enqueue(Q, &[a.clone(), a.clone()]).unwrap();
    assert!(again.iter().all(|e| e.id == first.id && !e.created));
    let t = f.store.claim(Q, "w", 1, LEASE).unwrap().remove(0);
    assert_eq!(f.store.enqueue(Q, &[a.clone()]).unwrap()[0].id, first.id);
    f.store.complete(t.id, t.token, b"null").unwrap();
    let fresh = f.store.enqueue(Q, &[a]).unwrap()[0];
    assert!(fresh.created && fresh.id != first.id);
}

#[test]
fn release_gives_the_attempt_back() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[task("a", 0)]).unwrap()[0].id;
    let t = f.store.claim(Q, "w", 1, LEASE).unwrap().remove(0);
    f.store.release(id, t.token).unwrap();
    let rec = f.store.get(Q, id).unwrap();
    assert_eq!((rec.status, rec.attempts), (TaskStatus::Pending, 0));
}

#[test]
fn counts_list_every_status() {
    let Some(f) = fixture() else { return };
    f.store
        .enqueue(Q, &[task("a", 0), task("b", 0), task("c", 0)])
        .unwrap();
    let t = f.store.claim(Q, "w", 1, LEASE).unwrap().remove(0);
    f.store.complete(t.id, t.token, b"null").unwrap();
    let counts = f.store.counts(Q).unwrap();
    assert_eq!(counts.len(), 5);
    assert!(counts.contains(&(TaskStatus::Pending, 2)));
    assert!(counts.contains(&(TaskStatus::Completed, 1)));
    assert!(counts.contains(&(TaskStatus::Dead, 0)));
    assert!(
        f.store
            .counts("other")
            .unwrap()
            .iter()
            .all(|(_, n)| *n == 0)
    );
}

#[test]
fn retention_by_age_and_count() {
    let Some(f) = fixture() else { return };
    let e = f
        .store
        .enqueue(Q, &(0..5).map(|_| task("a", 0)).collect::<Vec<_>>())
        .unwrap();
    for t in f.store.claim(Q, "w", 5, LEASE).unwrap() {
        f.store.complete(t.id, t.token, b"null").unwrap();
        f.clock.advance(1000);
    }
    // Finished at t0, t0+1s, ..., t0+4s; now t0+5s.
    let by_count = Retention {
        completed: Keep {
            max_age_ms: None,
            max_count: Some(3),
        },
        ..Default::default()
    };
    assert_eq!(f.store.prune(Q, &by_count).unwrap(), 2);
    assert!(matches!(
        f.store.get(Q, e[0].id),
        Err(Error::UnknownTask(_))
    ));
    assert!(matches!(
        f.store.history(Q, e[1].id),
        Err(Error::UnknownTask(_))
    ));
    let by_age = Retention {
        completed: Keep {
            max_age_ms: Some(1500),
            max_count: None,
        },
        ..Default::default()
    };
    assert_eq!(f.store.prune(Q, &by_age).unwrap(), 2);
    assert_eq!(
        f.store.get(Q, e[4].id).unwrap().status,
        TaskStatus::Completed
    );
    assert_eq!(f.store.prune(Q, &Retention::default()).unwrap(), 0);
}

#[test]
fn bad_input_writes_nothing() {
    let Some(f) = fixture() else { return };
    let mut bad = task("a", 0);
    bad.priority = 1001;
    assert!(matches!(
        f.store.enqueue(Q, &[task("ok", 0), bad]),
        Err(Error::InvalidArgument(_))
    ));
    let mut big = task("a", 0);
    big.payload = vec![b'x'; (1 << 20) + 1].into();
    assert!(matches!(
        f.store.enqueue(Q, &[big]),
        Err(Error::PayloadTooLarge { .. })
    ));
    assert!(matches!(
        f.store.enqueue(Q, &[task("", 0)]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        f.store.enqueue("bad\u{0}queue", &[task("a", 0)]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(f.store.counts(Q).unwrap().iter().all(|(_, n)| *n == 0));
}

#[test]
fn finish_many_fences_each_outcome_on_its_own() {
    use crate::task::Outcome;
    let Some(f) = fixture() else { return };
    f.store
        .enqueue(Q, &[task("a", 0), task("b", 0), task("c", 0)])
        .unwrap();
    let t = f.store.claim(Q, "w", 3, LEASE).unwrap();
    let answers = f
        .store
        .finish_many(&[
            Outcome::Completed {
                id: t[0].id,
                token: t[0].token,
                result: b"1".to_vec(),
                run_us: None,
            },
            Outcome::Completed {
                id: t[1].id,
                token: t[1].token + 1,
                result: b"2".to_vec(),
                run_us: None,
            },
            Outcome::Failed {
                id: t[2].id,
                token: t[2].token,
                error: "{}".into(),
                action: FailAction::Retry { delay_ms: 10 },
                impact: Default::default(),
                run_us: None,
            },
        ])
        .unwrap();
    assert!(matches!(answers[0], Ok(TaskStatus::Completed)));
    assert!(matches!(answers[1], Err(Error::LeaseLost(id)) if id == t[1].id));
    assert!(matches!(answers[2], Ok(TaskStatus::Pending)));
    assert_eq!(
        f.store.get(Q, t[0].id).unwrap().result.as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(f.store.get(Q, t[1].id).unwrap().status, TaskStatus::Running);
}

/// The failure path is set-based (one UPDATE for the batch, then its history and events):
/// each outcome must still be judged and recorded on its own.
#[test]
fn a_batch_of_failures_records_each_run_on_its_own() {
    use crate::task::{FailureImpact, Outcome};
    let Some(f) = fixture() else { return };
    let e = f
        .store
        .enqueue(
            Q,
            &[
                task("a", 0),
                task("b", 0),
                task("c", 0),
                task("d", 0),
                task("e", 0),
            ],
        )
        .unwrap();
    let t = f.store.claim(Q, "w", 5, LEASE).unwrap();
    f.clock.advance(7);
    let now = f.clock.now_ms();
    let error = "{\"type\":\"E\",\"message\":\"quote \\\" newline \\n tab \\t é ✓\"}";
    let failed =
        |i: usize, token_offset: i64, action: FailAction, impact: FailureImpact| Outcome::Failed {
            id: t[i].id,
            token: t[i].token + token_offset,
            error: error.into(),
            action,
            impact,
            run_us: Some(5),
        };
    let retry = FailAction::Retry { delay_ms: 1_000 };
    let plain = FailureImpact::default();
    let held = FailureImpact {
        counts: false,
        hold_ms: Some(50),
    };
    let answers = f
        .store
        .finish_many(&[
            failed(0, 0, retry, plain),
            failed(1, 0, FailAction::Dead, plain),
            failed(2, 1, retry, plain),
            failed(0, 0, retry, plain),
            Outcome::Completed {
                id: t[3].id,
                token: t[3].token,
                result: b"null".to_vec(),
                run_us: None,
            },
            failed(4, 0, retry, held),
        ])
        .unwrap();
    assert!(matches!(answers[0], Ok(TaskStatus::Pending)));
    assert!(matches!(answers[1], Ok(TaskStatus::Dead)));
    assert!(matches!(answers[2], Err(Error::LeaseLost(id)) if id == t[2].id));
    assert!(
        matches!(answers[3], Err(Error::LeaseLost(id)) if id == t[0].id),
        "a repeated outcome finds the lease gone"
    );
    assert!(matches!(answers[4], Ok(TaskStatus::Completed)));
    assert!(matches!(answers[5], Ok(TaskStatus::Pending)));

    let a = f.store.get(Q, e[0].id).unwrap();
    assert_eq!(
        (a.status, a.attempts, a.run_at),
        (TaskStatus::Pending, 1, now + 1_000)
    );
    assert_eq!(a.last_error.as_deref(), Some(error));
    assert_eq!(a.finished_at, None);
    let b = f.store.get(Q, e[1].id).unwrap();
    assert_eq!((b.status, b.finished_at), (TaskStatus::Dead, Some(now)));
    assert_eq!(f.store.get(Q, e[2].id).unwrap().status, TaskStatus::Running);
    let held_task = f.store.get(Q, e[4].id).unwrap();
    assert_eq!(held_task.attempts, 0, "a rate limit gives the attempt back");

    let history = f.store.history(Q, e[0].id).unwrap();
    let path: Vec<_> = history
        .iter()
        .map(|h| (h.to, h.at, h.error.as_deref()))
        .collect();
    assert_eq!(
        path,
        [
            (TaskStatus::Pending, now - 7, None),
            (TaskStatus::Running, now - 7, None),
            (TaskStatus::Pending, now, Some(error)),
        ]
    );
    assert!(
        history[1..]
            .iter()
            .all(|h| h.worker.as_deref() == Some("w"))
    );

    let events = f.store.events(Q, None, 0, 100).unwrap();
    let of = |id: i64| -> Vec<(String, String)> {
        events
            .iter()
            .filter(|ev| ev.task_id == Some(id))
            .map(|ev| (ev.kind.clone(), ev.detail.clone().unwrap_or_default()))
            .collect()
    };
    // Details are JSON; read them back with SQLite's own parser.
    let json = rusqlite::Connection::open_in_memory().unwrap();
    let field = |detail: &str, path: &str| -> String {
        json.query_row("SELECT ?1 ->> ?2", (detail, path), |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .map(|v| match v {
            rusqlite::types::Value::Text(s) => s,
            rusqlite::types::Value::Integer(i) => i.to_string(),
            other => format!("{other:?}"),
        })
        .unwrap()
    };
    for (i, attempt, after) in [(0, "1", "retried"), (1, "1", "dead"), (4, "1", "retried")] {
        let got = of(e[i].id);
        let kinds: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["failed", after], "task {i}");
        assert_eq!(field(&got[0].1, "$.attempt"), attempt, "task {i}");
        assert_eq!(field(&got[0].1, "$.error"), error, "task {i}");
    }
    let story: Vec<(&str, Option<i64>)> = events
        .iter()
        .map(|ev| (ev.kind.as_str(), ev.task_id))
        .collect();
    assert_eq!(
        story,
        [
            ("failed", Some(e[0].id)),
            ("retried", Some(e[0].id)),
            ("failed", Some(e[1].id)),
            ("dead", Some(e[1].id)),
            ("failed", Some(e[4].id)),
            ("retried", Some(e[4].id)),
        ],
        "each task's events together, in the order of the outcomes"
    );
    assert_eq!(
        field(&of(e[0].id)[1].1, "$.run_at"),
        (now + 1_000).to_string()
    );
    assert_eq!(of(e[1].id)[1].1, "{}");
    assert!(of(e[2].id).is_empty() && of(e[3].id).is_empty());
}

#[test]
fn history_lists_every_run_whatever_ended_it() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[task("a", 0)]).unwrap()[0].id;
    let first = f.store.claim(Q, "w1", 1, LEASE).unwrap().remove(0);
    f.clock.advance(10);
    f.store.release(id, first.token).unwrap();
    f.clock.advance(10);
    f.store.claim(Q, "w2", 1, LEASE).unwrap();
    assert_eq!(rescue_after(&f, LEASE + 1).len(), 1);
    f.clock.advance(10);
    let last = f.store.claim(Q, "w3", 1, LEASE).unwrap().remove(0);
    let running = f.store.history(Q, id).unwrap();
    assert_eq!(running.last().unwrap().to, TaskStatus::Running);
    f.clock.advance(10);
    f.store.complete(id, last.token, b"null").unwrap();
    let history = f.store.history(Q, id).unwrap();
    use TaskStatus::*;
    let path: Vec<_> = history
        .iter()
        .map(|t| (t.to, t.worker.as_deref().unwrap_or("-")))
        .collect();
    assert_eq!(
        path,
        vec![
            (Pending, "-"),
            (Running, "w1"),
            (Pending, "w1"),
            (Running, "w2"),
            (Pending, "w2"),
            (Running, "w3"),
            (Completed, "w3"),
        ]
    );
    assert!(
        history.windows(2).all(|w| w[0].at <= w[1].at),
        "{history:?}"
    );
    assert_eq!(running.len() + 1, history.len());
}

#[test]
fn batches_store_every_task_as_given_whatever_their_mix() {
    let Some(f) = fixture() else { return };
    let now = f.clock.now_ms();
    // 272 keyless tasks (statements of 128, 128 and 16 rows), then one-row inserts around two
    // unique keys; uniform runs and mixed ones (name, group, priority, delay and attempts
    // varying row to row).
    let mut tasks = Vec::new();
    for i in 0..(128 + 128 + 16 + 7) {
        let mixed = (128..256).contains(&i) || i >= 270;
        tasks.push(NewTask {
            name: if mixed && i % 2 == 0 {
                "even".into()
            } else {
                "t".into()
            },
            resource_group: if mixed && i % 3 == 0 {
                "g3".into()
            } else {
                "default".into()
            },
            payload: format!("{{\"i\":{i}}}").into_bytes().into(),
            priority: if mixed { i64::from(i % 5) } else { 2 },
            run_at: (mixed && i % 7 == 0).then_some(now + 1000 + i64::from(i)),
            max_attempts: if mixed { 1 + i64::from(i % 4) } else { 3 },
            unique_key: (i == 272 || i == 276).then(|| format!("k{i}").into()),
            cache_ttl: None,
        });
    }
    assert_stored_as_given(&f, &tasks, now);
}

/// Runs of keyless tasks long enough for an engine's bulk path (the PostgreSQL engine COPYs
/// from 1,024 on), around a unique key, with options and payloads (some empty) varying row to
/// row: every task is stored as given, ids rising in order.
#[test]
fn bulk_batches_store_every_task_as_given() {
    let Some(f) = fixture() else { return };
    let now = f.clock.now_ms();
    let tasks: Vec<NewTask> = (0..2_600u32)
        .map(|i| NewTask {
            name: if i % 2 == 0 {
                "even".into()
            } else {
                "t".into()
            },
            resource_group: if i % 3 == 0 {
                "g3".into()
            } else {
                "default".into()
            },
            payload: if i % 11 == 0 {
                Vec::new().into()
            } else {
                format!("{{\"i\":{i}}}").into_bytes().into()
            },
            priority: i64::from(i % 5),
            run_at: (i % 7 == 0).then_some(now + 1000 + i64::from(i)),
            max_attempts: 1 + i64::from(i % 4),
            unique_key: (i == 1_300).then(|| "k".into()),
            cache_ttl: None,
        })
        .collect();
    assert_stored_as_given(&f, &tasks, now);
}

/// Enqueues `tasks` (unique keys all new) and checks each is stored as given, ids rising.
fn assert_stored_as_given(f: &Fixture, tasks: &[NewTask], now: i64) {
    let done = f.store.enqueue(Q, tasks).unwrap();
    assert_eq!(done.len(), tasks.len());
    assert!(done.iter().all(|e| e.created));
    assert!(
        done.windows(2).all(|w| w[0].id < w[1].id),
        "ids rise in enqueue order"
    );
    for (task, e) in tasks.iter().zip(&done) {
        let got = f.store.get(Q, e.id).unwrap();
        let want = (
            &*task.name,
            &*task.resource_group,
            &*task.payload,
            task.priority,
        );
        assert_eq!(
            (
                &*got.name,
                &*got.resource_group,
                &*got.payload,
                got.priority
            ),
            want
        );
        assert_eq!(got.run_at, task.run_at.unwrap_or(now));
        assert_eq!(got.max_attempts, task.max_attempts);
        assert_eq!(got.unique_key.as_deref(), task.unique_key.as_deref());
        assert_eq!((got.status, got.created_at), (TaskStatus::Pending, now));
    }
}

/// A batch mixing keyless tasks, new unique keys, keys repeated within the batch and keys
/// an unfinished task holds already (and keys of finished tasks, free again), with options
/// varying row to row: each keyed task gets the id of the one holding its key, the others
/// are stored, in order, as given.
#[test]
fn batches_with_unique_keys_match_a_model() {
    let Some(f) = fixture() else { return };
    let keyed = |key: &str| NewTask {
        unique_key: Some(key.to_string().into()),
        ..task("t", 0)
    };
    let before: Vec<i64> = f
        .store
        .enqueue(
            Q,
            &(0..10).map(|k| keyed(&format!("k{k}"))).collect::<Vec<_>>(),
        )
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    for t in f.store.claim(Q, "w", 5, LEASE).unwrap() {
        f.store.complete(t.id, t.token, b"null").unwrap(); // k0..k4 are free again
    }
    let mut batch = Vec::new();
    for i in 0..420u32 {
        let key = match i % 5 {
            0 | 1 => None,
            _ => Some(format!("k{}", i % 13)),
        };
        batch.push(NewTask {
            name: if i % 3 == 0 { "a".into() } else { "t".into() },
            payload: format!("{{\"i\":{i}}}").into_bytes().into(),
            priority: if i < 200 { 0 } else { i64::from(i % 4) },
            unique_key: key.map(Into::into),
            ..task("t", 0)
        });
    }
    let done = f.store.enqueue(Q, &batch).unwrap();
    assert_eq!(done.len(), batch.len());
    let mut holder: std::collections::HashMap<String, i64> =
        (5..10).map(|k| (format!("k{k}"), before[k])).collect();
    let mut last_created = *before.last().unwrap();
    for (i, (task, e)) in batch.iter().zip(&done).enumerate() {
        match task.unique_key.as_deref().and_then(|k| holder.get(k)) {
            Some(&id) => assert_eq!((e.id, e.created), (id, false), "task {i}"),
            None => {
                assert!(e.created && e.id > last_created, "task {i}: {e:?}");
                last_created = e.id;
                if let Some(k) = task.unique_key.as_deref() {
                    holder.insert(k.to_string(), e.id);
                }
                let got = f.store.get(Q, e.id).unwrap();
                assert_eq!(got.payload, task.payload.to_vec(), "task {i}");
                assert_eq!(got.unique_key.as_deref(), task.unique_key.as_deref());
                assert_eq!((&*got.name, got.priority), (&*task.name, task.priority));
            }
        }
    }
    let mut keys: std::collections::HashSet<&str> = batch
        .iter()
        .filter_map(|t| t.unique_key.as_deref())
        .collect();
    keys.extend(["k5", "k6", "k7", "k8", "k9"]);
    assert_eq!(
        holder.len(),
        keys.len(),
        "every key has one unfinished holder"
    );
    assert!(
        keys.contains("k0") && keys.len() > 8,
        "the batch reuses freed keys"
    );
}

#[test]
fn large_batches_keep_order_ids_and_unique_keys() {
    let Some(f) = fixture() else { return };
    let mut tasks: Vec<NewTask> = (0..300)
        .map(|i| NewTask {
            payload: format!("{{\"i\":{i}}}").into_bytes().into(),
            ..task("t", 0)
        })
        .collect();
    tasks[150].unique_key = Some("k".into());
    tasks[151].unique_key = Some("k".into());
    let done = f.store.enqueue(Q, &tasks).unwrap();
    assert_eq!(done.len(), 300);
    assert!(
        !done[151].created && done[151].id == done[150].id,
        "the key was taken"
    );
    let ids: Vec<i64> = done.iter().filter(|e| e.created).map(|e| e.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids rise in enqueue order"
    );
    for (i, e) in done.iter().enumerate().filter(|(i, _)| *i != 151) {
        let payload = f.store.get(Q, e.id).unwrap().payload;
        assert_eq!(payload, format!("{{\"i\":{i}}}").into_bytes(), "task {i}");
    }
}

/// Small enqueues from many threads at once (which engines merge into shared transactions):
/// each caller gets its own tasks' ids, in its order, and a unique key several callers share
/// gives them all the one task that holds it.
#[test]
fn concurrent_small_enqueues_each_get_their_own_answer() {
    let Some(f) = fixture() else { return };
    let store = &f.store;
    std::thread::scope(|s| {
        for t in 0..16_u32 {
            s.spawn(move || {
                for round in 0..40_u32 {
                    let payload = |i: u32| format!("{{\"t\":{t},\"r\":{round},\"i\":{i}}}");
                    let mut tasks: Vec<NewTask> = (0..1 + round % 3)
                        .map(|i| NewTask {
                            payload: payload(i).into_bytes().into(),
                            ..task("t", 0)
                        })
                        .collect();
                    if round % 5 == 0 {
                        tasks.push(NewTask {
                            payload: b"{\"shared\":1}".into(),
                            unique_key: Some(format!("shared-{round}").into()),
                            ..task("t", 0)
                        });
                    }
                    let done = store.enqueue(Q, &tasks).unwrap();
                    assert_eq!(done.len(), tasks.len());
                    for (task, e) in tasks.iter().zip(&done) {
                        let got = store.get(Q, e.id).unwrap();
                        assert_eq!(got.payload, &*task.payload, "thread {t} round {round}");
                        assert_eq!(got.unique_key.as_deref(), task.unique_key.as_deref());
                    }
                    assert!(done.windows(2).all(|w| w[0].id < w[1].id) || round % 5 == 0);
                }
            });
        }
    });
    let counts = store.counts(Q).unwrap();
    let pending: u64 = counts
        .iter()
        .filter(|(s, _)| *s == TaskStatus::Pending)
        .map(|(_, n)| n)
        .sum();
    // 16 threads x (40 rounds of 1-3 tasks: 13 full cycles + 1) + one task per shared key.
    let per_thread: u64 = (0..40_u64).map(|r| 1 + r % 3).sum();
    assert_eq!(pending, 16 * per_thread + 8);
}
