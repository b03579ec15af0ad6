//! The result cache: a completed run of a cached task answers identical enqueues until its
//! ttl ends; identical enqueues while it is pending or running attach to it.

use super::{LEASE, Q, fixture, open_engine, task};
use crate::error::Error;
use crate::metrics::Counter;
use crate::policy::retention::{Keep, Retention};
use crate::store::Engine;
use crate::task::{NewTask, TaskStatus};

const TTL: i64 = 60_000;

fn cached<'a>(name: &'a str, key: &str) -> NewTask<'a> {
    NewTask {
        unique_key: Some(key.to_string().into()),
        cache_ttl: Some(TTL),
        ..task(name, 0)
    }
}

/// Claims the one ready task and completes it with `result`.
fn run_one(store: &dyn Engine, result: &[u8]) -> i64 {
    let t = store.claim(Q, "w", 1, LEASE).unwrap().remove(0);
    store.complete(t.id, t.token, result).unwrap();
    t.id
}

#[test]
fn a_completed_run_answers_identical_enqueues_until_its_ttl_ends() {
    let Some(f) = fixture() else { return };
    let first = f.store.enqueue(Q, &[cached("t", "k")]).unwrap()[0];
    assert!(first.created && !first.cached);
    // Pending, then running: identical enqueues attach to the run (no second task).
    let attached = f.store.enqueue(Q, &[cached("t", "k")]).unwrap()[0];
    assert_eq!(
        (attached.id, attached.created, attached.cached),
        (first.id, false, false)
    );
    assert_eq!(run_one(&*f.store, b"42"), first.id);
    // Completed: a hit, from this engine and from another one on the same store.
    f.clock.advance(TTL - 1);
    let other = open_engine(&f.path, &f.clock);
    for store in [&f.store, &other] {
        let hit = store.enqueue(Q, &[cached("t", "k")]).unwrap()[0];
        assert_eq!((hit.id, hit.created, hit.cached), (first.id, false, true));
        assert_eq!(
            store.get(Q, hit.id).unwrap().result.as_deref(),
            Some(&b"42"[..])
        );
    }
    assert!(
        f.store.claim(Q, "w", 10, LEASE).unwrap().is_empty(),
        "nothing runs again"
    );
    // Expired: a new run.
    f.clock.advance(1);
    let fresh = f.store.enqueue(Q, &[cached("t", "k")]).unwrap()[0];
    assert!(fresh.created && fresh.id != first.id);
}

#[test]
fn keys_of_other_tasks_and_uncached_enqueues_do_not_hit() {
    let Some(f) = fixture() else { return };
    let id = f.store.enqueue(Q, &[cached("t", "k")]).unwrap()[0].id;
    run_one(&*f.store, b"1");
    // Another task name with the same key, and the same key without a cache: new runs.
    let other_name = f.store.enqueue(Q, &[cached("u", "k")]).unwrap()[0];
    assert!(other_name.created);
    run_one(&*f.store, b"2");
    let uncached = NewTask {
        unique_key: Some("k".into()),
        ..task("t", 0)
    };
    let plain = f.store.enqueue(Q, &[uncached]).unwrap()[0];
    assert!(plain.created && plain.id != id);
}

#[test]
fn a_failed_run_is_not_cached() {
    let Some(f) = fixture() else { return };
    let mut one_try = cached("t", "k");
    one_try.max_attempts = 1;
    let id = f.store.enqueue(Q, &[one_try]).unwrap()[0].id;
    let t = f.store.claim(Q, "w", 1, LEASE).unwrap().remove(0);
    f.store
        .fail(
            t.id,
            t.token,
            "{}",
            crate::task::FailAction::Retry { delay_ms: 0 },
        )
        .unwrap();
    assert_eq!(f.store.get(Q, id).unwrap().status, TaskStatus::Dead);
    assert!(f.store.enqueue(Q, &[cached("t", "k")]).unwrap()[0].created);
}

#[test]
fn clearing_ends_one_entry_or_all_of_a_task_and_keeps_the_runs() {
    let Some(f) = fixture() else { return };
    f.store
        .enqueue(Q, &[cached("t", "a"), cached("t", "b"), cached("u", "c")])
        .unwrap();
    let ran: Vec<i64> = (0..3).map(|_| run_one(&*f.store, b"null")).collect();
    assert_eq!(f.store.clear_cache(Q, "t", Some("a")).unwrap(), 1);
    assert!(f.store.enqueue(Q, &[cached("t", "a")]).unwrap()[0].created);
    assert!(f.store.enqueue(Q, &[cached("t", "b")]).unwrap()[0].cached);
    assert_eq!(f.store.clear_cache(Q, "t", None).unwrap(), 1);
    assert!(f.store.enqueue(Q, &[cached("t", "b")]).unwrap()[0].created);
    assert!(
        f.store.enqueue(Q, &[cached("u", "c")]).unwrap()[0].cached,
        "task u kept"
    );
    for id in ran {
        assert_eq!(f.store.get(Q, id).unwrap().status, TaskStatus::Completed);
    }
}

#[test]
fn retention_prunes_entries_with_their_runs() {
    let Some(f) = fixture() else { return };
    f.store.enqueue(Q, &[cached("t", "k")]).unwrap();
    run_one(&*f.store, b"null");
    let none = Retention {
        completed: Keep {
            max_age_ms: None,
            max_count: Some(0),
        },
        ..Default::default()
    };
    assert_eq!(f.store.prune(Q, &none).unwrap(), 1);
    assert!(f.store.enqueue(Q, &[cached("t", "k")]).unwrap()[0].created);
}

#[test]
fn hits_and_misses_are_counted() {
    let Some(f) = fixture() else { return };
    f.store.enqueue(Q, &[cached("t", "k")]).unwrap(); // miss
    f.store.enqueue(Q, &[cached("t", "k")]).unwrap(); // attached: a hit
    run_one(&*f.store, b"null");
    f.store
        .enqueue(Q, &[cached("t", "k"), cached("t", "k"), task("t", 0)])
        .unwrap(); // two hits, one uncached task
    f.store.flush_metrics().unwrap();
    let m = f.store.metrics(Q, 0, 86_400_000).unwrap();
    let s = &m["default"];
    assert_eq!(s.count(Counter::CacheHits), 3);
    assert_eq!(s.count(Counter::CacheMisses), 1);
    assert_eq!(s.count(Counter::Enqueued), 2);
}

#[test]
fn a_cache_needs_a_key_and_a_positive_ttl() {
    let Some(f) = fixture() else { return };
    let keyless = NewTask {
        cache_ttl: Some(TTL),
        ..task("t", 0)
    };
    let zero = NewTask {
        cache_ttl: Some(0),
        ..cached("t", "k")
    };
    for bad in [keyless, zero] {
        assert!(matches!(
            f.store.enqueue(Q, &[bad]),
            Err(Error::InvalidArgument(_))
        ));
    }
}

#[test]
fn the_observability_pass_ends_expired_entries_and_keeps_the_runs() {
    let Some(f) = fixture() else { return };
    f.store
        .enqueue(Q, &[cached("t", "old"), cached("t", "new")])
        .unwrap();
    let old = run_one(&*f.store, b"1");
    f.clock.advance(TTL / 2);
    run_one(&*f.store, b"2");
    f.clock.advance(TTL / 2); // "old" expired, "new" has half its ttl left
    let keep_all = crate::store::ObservabilityRetention {
        events_ms: i64::MAX / 4,
        raw_metrics_ms: i64::MAX / 4,
        hourly_metrics_ms: i64::MAX / 4,
        workers_ms: i64::MAX / 4,
    };
    assert_eq!(f.store.prune_observability(&keep_all).unwrap(), 1);
    assert_eq!(f.store.prune_observability(&keep_all).unwrap(), 0);
    assert_eq!(f.store.get(Q, old).unwrap().status, TaskStatus::Completed);
    assert!(f.store.enqueue(Q, &[cached("t", "new")]).unwrap()[0].cached);
    assert!(f.store.enqueue(Q, &[cached("t", "old")]).unwrap()[0].created);
}
