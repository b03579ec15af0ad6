//! Tasks a worker has no processor for: given back (attempt returned) with a delay that
//! doubles with each deferral in a row, whichever worker defers; dead after the grace.

use super::{LEASE, Q, fixture, task};
use crate::clock::Clock;
use crate::error::Error;
use crate::store::{Unrunnable, WorkerInfo};
use crate::task::{FailAction, TaskStatus};

const GRACE: i64 = 3_600_000;
const DEAD_ERROR: &str = r#"{"type":"ferroq.errors.UnknownTaskName","message":"no processor for 'new'","traceback":null}"#;

/// Claims the one ready task as `worker` and defers it.
fn claim_and_defer(f: &super::Fixture, worker: &str) -> Result<crate::store::Deferral, Error> {
    let t = f.store.claim(Q, worker, 1, LEASE).unwrap().remove(0);
    let unrunnable = Unrunnable {
        id: t.id,
        token: t.token,
        error: DEAD_ERROR,
    };
    f.store.defer(&[unrunnable], GRACE).unwrap().remove(0)
}

#[test]
fn a_deferred_task_is_pending_with_its_attempt_back_and_a_delay_doubling_across_workers() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[task("new", 0)]).unwrap()[0].id;
    let mut delays = Vec::new();
    for n in 1..=11 {
        let worker = if n % 2 == 0 { "old-a" } else { "old-b" };
        let start = f.clock.now_ms();
        let d = claim_and_defer(&f, worker).unwrap();
        assert_eq!((d.status, d.deferrals), (TaskStatus::Pending, n));
        let t = f.store.get(Q, id).unwrap();
        assert_eq!(
            (t.status, t.attempts, t.run_at),
            (TaskStatus::Pending, 0, d.run_at)
        );
        assert_eq!(t.lease_owner.as_deref(), Some(worker)); // as a release leaves it
        assert!(
            f.store.claim(Q, "any", 1, LEASE).unwrap().is_empty(),
            "delayed"
        );
        assert_eq!(f.store.next_run_at(Q).unwrap(), Some(d.run_at));
        delays.push(d.run_at - start);
        f.clock.advance(d.run_at - start);
    }
    assert_eq!(
        delays,
        [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300].map(|s| s * 1_000)
    );
    let history = f.store.history(Q, id).unwrap();
    let last = history.last().unwrap();
    assert_eq!(
        (last.from, last.to),
        (Some(TaskStatus::Running), TaskStatus::Pending)
    );
    let error = last.error.as_deref().unwrap();
    assert!(error.starts_with(r#"{"type":"NoProcessor","#), "{error}");
    assert!(
        error.contains("old-b") && error.contains("deferral 11 in a row"),
        "{error}"
    );
}

#[test]
fn a_deferred_task_goes_dead_once_the_grace_since_its_first_deferral_is_over() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[task("new", 0)]).unwrap()[0].id;
    let first = f.clock.now_ms();
    while f.clock.now_ms() - first < GRACE {
        let d = claim_and_defer(&f, "old").unwrap();
        assert_eq!(d.status, TaskStatus::Pending);
        f.clock.advance(d.run_at - f.clock.now_ms());
    }
    let d = claim_and_defer(&f, "old").unwrap();
    assert_eq!(d.status, TaskStatus::Dead);
    let t = f.store.get(Q, id).unwrap();
    assert_eq!(t.status, TaskStatus::Dead);
    assert_eq!(t.last_error.as_deref(), Some(DEAD_ERROR));
    assert!(t.finished_at.is_some());
    assert_eq!(f.store.dead_since(Q, first).unwrap(), 1);
}

#[test]
fn no_grace_kills_at_the_first_meeting() {
    let Some(f) = fixture() else { return };
    f.store.enqueue(Q, &[task("new", 0)]).unwrap();
    let t = f.store.claim(Q, "old", 1, LEASE).unwrap().remove(0);
    let unrunnable = Unrunnable {
        id: t.id,
        token: t.token,
        error: DEAD_ERROR,
    };
    let d = f.store.defer(&[unrunnable], 0).unwrap().remove(0).unwrap();
    assert_eq!(d.status, TaskStatus::Dead);
}

/// A run that ended otherwise (here a retried failure on a worker that had the processor)
/// starts a new count: short delays again, and a fresh grace.
#[test]
fn another_outcome_starts_a_new_count() {
    let Some(f) = fixture() else { return };
    f.store.enqueue(Q, &[task("new", 0)]).unwrap();
    for _ in 0..3 {
        let d = claim_and_defer(&f, "old").unwrap();
        f.clock.advance(d.run_at - f.clock.now_ms());
    }
    let t = f.store.claim(Q, "new", 1, LEASE).unwrap().remove(0);
    f.store
        .fail(t.id, t.token, "{}", FailAction::Retry { delay_ms: 0 })
        .unwrap();
    let d = claim_and_defer(&f, "old").unwrap();
    assert_eq!(d.deferrals, 1);
}

#[test]
fn a_deferral_is_fenced_by_the_lease_token() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[task("new", 0)]).unwrap()[0].id;
    let t = f.store.claim(Q, "old", 1, LEASE).unwrap().remove(0);
    let stale = Unrunnable {
        id,
        token: t.token + 1,
        error: DEAD_ERROR,
    };
    let answers = f.store.defer(&[stale], GRACE).unwrap();
    assert!(matches!(answers[0], Err(Error::LeaseLost(i)) if i == id));
    assert_eq!(f.store.get(Q, id).unwrap().status, TaskStatus::Running);
}

fn worker(id: &str) -> WorkerInfo {
    super::worker_info(id)
}

/// What `ferroq status` shows: names live workers deferred, with their pending tasks; one
/// event per (name, worker), however often it defers.
#[test]
fn live_workers_without_a_processor_are_listed_with_the_pending_tasks() {
    let Some(f) = fixture() else { return };
    for w in ["old-a", "old-b", "gone"] {
        f.store.worker_seen(&worker(w)).unwrap();
    }
    f.store
        .enqueue(Q, &[task("new", 0), task("new", 0), task("new", 0)])
        .unwrap();
    f.store.enqueue(Q, &[task("other", 0)]).unwrap();
    assert!(f.store.no_processor(Q, 0).unwrap().is_empty());
    for w in ["old-a", "old-b", "old-a", "gone"] {
        claim_and_defer(&f, w).unwrap();
    }
    f.store.worker_stopped("gone").unwrap();
    let events = f.store.events(Q, None, 0, 100).unwrap();
    assert_eq!(
        events.iter().filter(|e| e.kind == "no_processor").count(),
        3
    );
    let found = f.store.no_processor(Q, 0).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].task, "new");
    assert_eq!(found[0].workers, ["old-a", "old-b"]);
    assert_eq!(found[0].pending, 3);
    // Workers not seen since: none listed.
    assert!(
        f.store
            .no_processor(Q, f.clock.now_ms() + 1)
            .unwrap()
            .is_empty()
    );
}
