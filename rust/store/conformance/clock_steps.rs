//! Wall-clock steps, both ways, seen by one process and by two (two stores on one file,
//! each with its own clock): due tasks stay due, leases are neither stranded nor taken
//! from live holders.

use std::sync::Arc;

use super::{LEASE, Q, fixture, ids, open_engine, task};
use crate::clock::{Clock, ManualClock};
use crate::store::Engine;
use crate::task::TaskStatus;

const HOUR: i64 = 3_600_000;

/// A second process on the fixture's store, with a clock of its own.
fn other_process(path: &std::path::Path, clock: &Arc<ManualClock>) -> Arc<dyn Engine> {
    open_engine(path, clock)
}

#[test]
fn a_backward_step_does_not_delay_due_tasks() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[task("a", 0)]).unwrap()[0].id;
    f.clock.step(-HOUR);
    assert_eq!(ids(&f.store.claim(Q, "w", 10, LEASE).unwrap()), vec![id]);
}

#[test]
fn a_process_started_after_a_backward_step_finds_due_tasks_due() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[task("a", 0)]).unwrap()[0].id;
    // The clock was set back an hour; a worker starts afterwards.
    let behind = Arc::new(ManualClock::new(f.clock.now_ms() - HOUR));
    let worker = other_process(&f.path, &behind);
    assert_eq!(ids(&worker.claim(Q, "w", 10, LEASE).unwrap()), vec![id]);
}

#[test]
fn delays_and_retries_keep_running_through_a_backward_step() {
    let Some(f) = fixture() else { return };
    let mut later = task("later", 0);
    later.run_at = Some(f.clock.now_ms() + 10_000);
    let id = f.store.enqueue(Q, &[later]).unwrap()[0].id;
    f.clock.step(-HOUR);
    f.clock.advance(9_000);
    assert!(f.store.claim(Q, "w", 10, LEASE).unwrap().is_empty());
    // Slewed at 95%: due about half a second late, not an hour.
    f.clock.advance(1_600);
    assert_eq!(ids(&f.store.claim(Q, "w", 10, LEASE).unwrap()), vec![id]);
}

#[test]
fn a_backward_step_does_not_strand_a_dead_workers_leases() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[task("a", 0)]).unwrap()[0].id;
    f.store.claim(Q, "dead", 1, LEASE).unwrap(); // its worker dies at once
    // The rescuer is another process, started after the clock was set back an hour.
    let behind = Arc::new(ManualClock::new(f.clock.now_ms() - HOUR));
    let rescuer = other_process(&f.path, &behind);
    let mut passes = 0;
    let rescued = loop {
        let rescued = rescuer.rescue_expired(Q).unwrap();
        if !rescued.is_empty() || passes > 200 {
            break rescued;
        }
        behind.advance(1_000);
        passes += 1;
    };
    assert_eq!(rescued, vec![(id, TaskStatus::Pending)]);
    // Within a lease and a half of real time (the slewed clock, then half a lease watched).
    assert!(passes <= (LEASE + LEASE / 2) / 1_000 + 3, "{passes} passes");
}

#[test]
fn a_rescuer_whose_clock_jumped_ahead_leaves_live_leases_alone() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[task("a", 0)]).unwrap()[0].id;
    let t = f.store.claim(Q, "holder", 1, LEASE).unwrap().remove(0);
    let ahead = Arc::new(ManualClock::new(f.clock.now_ms() + HOUR));
    let rescuer = other_process(&f.path, &ahead);
    // Ten leases of real time: the holder renews every third of a lease, the rescuer
    // passes every second (to it, every lease looks an hour expired).
    for second in 1..=10 * LEASE / 1_000 {
        f.clock.advance(1_000);
        ahead.advance(1_000);
        if second % (LEASE / 3 / 1_000) == 0 {
            assert_eq!(f.store.heartbeat(&[(id, t.token)], LEASE).unwrap(), [true]);
        }
        assert!(
            rescuer.rescue_expired(Q).unwrap().is_empty(),
            "second {second}"
        );
    }
    // The holder dies (right after its last renewal): half a lease later the rescuer takes
    // the task over.
    for _ in 1..LEASE / 2 / 1_000 {
        ahead.advance(1_000);
        assert!(rescuer.rescue_expired(Q).unwrap().is_empty());
    }
    ahead.advance(1_000);
    assert_eq!(
        rescuer.rescue_expired(Q).unwrap(),
        vec![(id, TaskStatus::Pending)]
    );
}

#[test]
fn stored_times_never_go_backwards() {
    let Some(f) = fixture() else { return };
    let first = f.store.enqueue(Q, &[task("a", 0)]).unwrap()[0].id;
    f.clock.step(-HOUR);
    let second = f.store.enqueue(Q, &[task("b", 0)]).unwrap()[0].id;
    let created = |id| f.store.get(Q, id).unwrap().created_at;
    assert!(created(second) >= created(first));
}
