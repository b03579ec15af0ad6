//! Tests of this engine on a real server: `FERROQ_TEST_PG_URL` names it. Without one they
//! pass saying loudly that they were skipped, unless `CI=true`: CI must not skip them.

use std::path::Path;

/// The test server's URL, or `None` (after saying so) when there is none outside CI.
pub fn server_url() -> Option<String> {
    match std::env::var("FERROQ_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("FERROQ_TEST_PG_URL is not set: CI must run the PostgreSQL suite")
        }
        _ => {
            // Once, and past the test harness's capture (which hides a passing test's
            // output): the skip must be seen.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** PostgreSQL suite SKIPPED: FERROQ_TEST_PG_URL is not set \
                     (run under tests/pg_cluster.py) ***\n"
                );
            });
            None
        }
    }
}

/// The test server's URL with a schema of its own for `path` (a test's temp dir).
pub fn schema_url(path: &Path) -> String {
    let url = server_url().expect("checked by the caller");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.to_string_lossy().bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}schema=t_{hash:016x}")
}

use std::sync::{Arc, Barrier};
use std::time::Duration;

use super::{Options, PgStore};
use crate::clock::{Clock, ManualClock};
use crate::error::Error;
use crate::policy::throttle::ThrottleConfig;
use crate::resource_group::GroupConfig;
use crate::store::testing::task;
use crate::store::{Host, Store, WorkerInfo};
use crate::task::TaskStatus;

/// A fresh schema on the test server (and the temp dir naming it), or `None` without one.
fn fresh() -> Option<(tempfile::TempDir, String)> {
    server_url()?;
    let dir = tempfile::tempdir().unwrap();
    let url = schema_url(dir.path());
    Some((dir, url))
}

fn open(url: &str) -> PgStore {
    PgStore::open(url, Options::default()).unwrap()
}

/// Hosts starting at once on a new database: each migration is applied once (under the
/// advisory lock), and every host opens.
#[test]
fn hosts_racing_to_open_a_new_schema_apply_each_migration_once() {
    let Some((_dir, url)) = fresh() else { return };
    let barrier = Arc::new(Barrier::new(8));
    let opened: Vec<_> = (0..8)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                PgStore::open(&url, Options::default()).map(|_| ())
            })
        })
        .collect();
    for t in opened {
        t.join().unwrap().unwrap();
    }
    let store = open(&url);
    assert_eq!(
        store.schema_versions().unwrap(),
        (1..=super::migrations::LATEST).collect::<Vec<_>>()
    );
}

/// Claimers on several hosts at once never take the same task (SKIP LOCKED), and each task
/// is completed exactly once.
#[test]
fn concurrent_claimers_on_two_hosts_take_each_task_once() {
    let Some((_dir, url)) = fresh() else { return };
    let hosts = [Arc::new(open(&url)), Arc::new(open(&url))];
    let batch: Vec<_> = (0..2000).map(|_| task("t", 0)).collect();
    hosts[0].enqueue("q", &batch).unwrap();
    let workers: Vec<_> = (0..6)
        .map(|i| {
            let store = hosts[i % 2].clone();
            std::thread::spawn(move || {
                let mut done = Vec::new();
                loop {
                    let claimed = store.claim("q", &format!("w{i}"), 37, 60_000).unwrap();
                    if claimed.is_empty() {
                        return done;
                    }
                    for t in claimed {
                        store.complete(t.id, t.token, b"null").unwrap();
                        done.push(t.id);
                    }
                }
            })
        })
        .collect();
    let mut all: Vec<i64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(all.len(), 2000);
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 2000, "a task was claimed twice");
    let counts = hosts[1].counts("q").unwrap();
    assert!(
        counts.contains(&(TaskStatus::Completed, 2000)),
        "{counts:?}"
    );
}

/// A group's cap holds across hosts claiming at the same moment: its row is locked for
/// each claim's transaction.
#[test]
fn a_concurrency_cap_holds_across_hosts_claiming_at_once() {
    let Some((_dir, url)) = fresh() else { return };
    let hosts: Vec<_> = (0..4).map(|_| Arc::new(open(&url))).collect();
    let config = GroupConfig {
        breaker: None,
        throttle: Some(ThrottleConfig {
            rate: None,
            burst: 1.0,
            max_concurrency: Some(3),
            adaptive: None,
        }),
    };
    hosts[0].configure_group("q", "api", &config).unwrap();
    let mut in_api = task("t", 0);
    in_api.resource_group = "api".into();
    hosts[0].enqueue("q", &vec![in_api; 50]).unwrap();
    for _round in 0..5 {
        let barrier = Arc::new(Barrier::new(hosts.len()));
        let claims: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(i, store)| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.claim("q", &format!("w{i}"), 10, 60_000).unwrap()
                })
            })
            .collect();
        let claimed: Vec<_> = claims.into_iter().flat_map(|c| c.join().unwrap()).collect();
        assert_eq!(claimed.len(), 3, "the cap of 3 was not held");
        for t in claimed {
            hosts[0].complete(t.id, t.token, b"null").unwrap();
        }
    }
}

/// The rescuer never overwrites a task completed after it sighted the lease (river#1302):
/// its update is fenced by the token, which the completion cleared.
#[test]
fn a_completion_just_before_a_rescue_stands() {
    let Some((dir, _)) = fresh() else { return };
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let url = schema_url(dir.path());
    let store = PgStore::open_with_clock(&url, Options::default(), clock.clone()).unwrap();
    let id = store.enqueue("q", &[task("t", 0)]).unwrap()[0].id;
    let t = store.claim("q", "w", 1, 30_000).unwrap().remove(0);
    clock.advance(15_000);
    assert!(store.rescue_expired("q").unwrap().is_empty()); // sighted, not yet due
    clock.advance(30_000);
    store.complete(id, t.token, b"1").unwrap(); // the holder was alive after all
    assert!(store.rescue_expired("q").unwrap().is_empty());
    let record = store.get("q", id).unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.result.as_deref(), Some(&b"1"[..]));
}

/// A store whose listener is connected (waiters then rely on NOTIFY alone, no polling).
fn listening(url: &str) -> PgStore {
    let store = open(url);
    let token = store.change_token().unwrap();
    store.wait_for_change(token, Duration::ZERO).unwrap(); // starts the listener
    while !store.local.get().unwrap().wakeup.listening() {
        std::thread::sleep(Duration::from_millis(5));
    }
    store
}

/// Whether `waiter` is woken (within 30 s) by `change`, run on another host after 50 ms.
fn wakes(waiter: &PgStore, change: impl FnOnce() + Send + 'static) -> bool {
    let token = waiter.change_token().unwrap();
    let other = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        change();
    });
    let woken = waiter
        .wait_for_change(token, Duration::from_secs(30))
        .unwrap();
    other.join().unwrap();
    woken
}

/// An enqueue on one host wakes a waiter on another through LISTEN/NOTIFY (with the
/// listener connected, waiters do not poll: without the NOTIFY this wait times out).
#[test]
fn an_enqueue_on_one_host_wakes_a_waiter_on_another() {
    let Some((_dir, url)) = fresh() else { return };
    let (writer, waiter) = (open(&url), listening(&url));
    assert!(wakes(&waiter, move || {
        writer.enqueue("q", &[task("t", 0)]).unwrap();
    }));
}

/// A completion on one host wakes a waiter on another (a `result()` in another process).
#[test]
fn a_completion_on_one_host_wakes_a_waiter_on_another() {
    let Some((_dir, url)) = fresh() else { return };
    let (worker, waiter) = (open(&url), listening(&url));
    worker.enqueue("q", &[task("t", 0)]).unwrap();
    let t = worker.claim("q", "w", 1, 60_000).unwrap().remove(0);
    assert!(wakes(&waiter, move || {
        worker.complete(t.id, t.token, b"null").unwrap();
    }));
}

/// A server that cannot be reached is a typed storage error naming where, never a panic.
#[test]
fn an_unreachable_server_is_a_typed_error() {
    if server_url().is_none() {
        return;
    }
    // Port 9 (discard) on loopback: nothing listens there.
    let err =
        PgStore::open("postgresql://nobody@127.0.0.1:9/none", Options::default()).unwrap_err();
    assert!(matches!(err, Error::Storage(_)), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
}

/// A clock set on the store drives stored times (the conformance suite relies on it).
#[test]
fn stored_times_come_from_the_store_clock() {
    let Some((dir, _)) = fresh() else { return };
    let clock = Arc::new(ManualClock::new(1_600_000_000_000));
    let url = schema_url(dir.path());
    let store = PgStore::open_with_clock(&url, Options::default(), clock.clone()).unwrap();
    let id = store.enqueue("q", &[task("t", 0)]).unwrap()[0].id;
    assert_eq!(store.get("q", id).unwrap().created_at, clock.now_ms());
}

/// A pooled connection the server closed (a restart, an idle timeout, an operator) is
/// replaced on the next call: the call succeeds, it does not fail once per stale connection.
#[test]
fn a_connection_closed_by_the_server_is_replaced() {
    let Some((_dir, url)) = fresh() else { return };
    let (store, admin) = (open(&url), open(&url));
    store.enqueue("q", &[task("t", 0)]).unwrap();
    let pid: i32 = store
        .read(|db, _| Ok(db.query_one("SELECT pg_backend_pid()", &[])?.get(0)))
        .unwrap();
    let killed: bool = admin
        .read(|db, _| {
            Ok(db
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])?
                .get(0))
        })
        .unwrap();
    assert!(killed);
    std::thread::sleep(Duration::from_millis(100)); // let the backend go
    store.enqueue("q", &[task("t", 0)]).unwrap(); // a write: BEGIN on a fresh connection
    let pid: i32 = store
        .read(|db, _| Ok(db.query_one("SELECT pg_backend_pid()", &[])?.get(0)))
        .unwrap();
    admin
        .read(|db, _| {
            Ok(db
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])?
                .get::<_, bool>(0))
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let counts = store.counts("q").unwrap(); // a read, on a fresh connection
    assert!(counts.contains(&(TaskStatus::Pending, 2)), "{counts:?}");
}

/// Workers keep their run journal on this host (a folder of the temp or runtime directory
/// named by server, database and schema): it opens, and a rescue on this host reads it.
#[test]
fn a_workers_run_journal_opens_on_this_host() {
    let Some((_dir, url)) = fresh() else { return };
    let store = open(&url);
    let journal = store.run_journal("w", 16).unwrap();
    assert!(journal.path().exists());
    assert!(
        journal.path().starts_with(std::env::temp_dir())
            || std::env::var_os("XDG_RUNTIME_DIR").is_some()
    );
}

/// A rescuer on the worker's host reads its journal: a task the dead worker claimed but
/// never started gets its attempt back (a rescuer elsewhere cannot, and charges it).
#[test]
fn a_rescue_on_the_workers_host_returns_an_attempt_never_started() {
    let Some((dir, _)) = fresh() else { return };
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let url = schema_url(dir.path());
    let store = PgStore::open_with_clock(&url, Options::default(), clock.clone()).unwrap();
    let id = store.enqueue("q", &[task("t", 0)]).unwrap()[0].id;
    let journal = store.run_journal("w", 16).unwrap();
    store.claim("q", "w", 1, 30_000).unwrap();
    // The worker dies holding it, never having started it: its journal stays behind (a
    // clean stop would delete it).
    std::mem::forget(journal);
    clock.advance(15_000);
    assert!(store.rescue_expired("q").unwrap().is_empty());
    clock.advance(30_000);
    assert_eq!(
        store.rescue_expired("q").unwrap(),
        vec![(id, TaskStatus::Pending)]
    );
    assert_eq!(store.get("q", id).unwrap().attempts, 0);
}

fn worker_on(store: &PgStore, id: &str, hostname: &str) {
    let info = WorkerInfo {
        id: id.into(),
        queue: "q".into(),
        hostname: hostname.into(),
        pid: 1,
        concurrency: 1,
        pool: "thread".into(),
        started_at: 0,
        last_seen: 0,
        stopped_at: None,
        running: 0,
    };
    store.worker_seen(&info).unwrap();
}

/// A rescuer with no journal of a dead worker on another host leaves its task, for up to
/// one more lease, to the rescuers of that host (which can read the journal) while a
/// sibling there heartbeats; then takes it over, charged, as when that host died whole.
#[test]
fn a_rescuer_leaves_a_task_to_its_workers_host_while_a_sibling_there_lives() {
    let Some((dir, _)) = fresh() else { return };
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let url = schema_url(dir.path());
    let store = PgStore::open_with_clock(&url, Options::default(), clock.clone()).unwrap();
    worker_on(&store, "far:1", "far-host");
    worker_on(&store, "far:2", "far-host");
    let id = store.enqueue("q", &[task("t", 0)]).unwrap()[0].id;
    store.claim("q", "far:1", 1, 30_000).unwrap();
    clock.advance(15_000);
    assert!(store.rescue_expired("q").unwrap().is_empty()); // sighted
    worker_on(&store, "far:2", "far-host"); // the sibling outlives far:1's last renewal
    clock.advance(30_000);
    assert!(store.rescue_expired("q").unwrap().is_empty()); // due, but left to far-host
    clock.advance(14_999);
    assert!(store.rescue_expired("q").unwrap().is_empty());
    clock.advance(1);
    assert_eq!(
        store.rescue_expired("q").unwrap(),
        vec![(id, TaskStatus::Pending)]
    );
    assert_eq!(store.get("q", id).unwrap().attempts, 1); // no journal: charged
}

/// Without a live sibling on the dead worker's host, or when that host is this one (whose
/// journals this rescuer has read), nothing is left to wait for: taken over when due.
#[test]
fn a_rescuer_takes_over_at_once_when_no_other_rescuer_could_read_the_journal() {
    let Some((dir, _)) = fresh() else { return };
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let url = schema_url(dir.path());
    let store = PgStore::open_with_clock(&url, Options::default(), clock.clone()).unwrap();
    let here = gethostname::gethostname().to_string_lossy().into_owned();
    worker_on(&store, "lone:1", "lone-host");
    worker_on(&store, "here:1", &here);
    worker_on(&store, "here:2", &here);
    let ids: Vec<_> = store
        .enqueue("q", &[task("t", 0), task("t", 0)])
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    store.claim("q", "lone:1", 1, 30_000).unwrap();
    store.claim("q", "here:1", 1, 30_000).unwrap();
    clock.advance(15_000);
    assert!(store.rescue_expired("q").unwrap().is_empty());
    worker_on(&store, "here:2", &here);
    clock.advance(30_000);
    let mut rescued = store.rescue_expired("q").unwrap();
    rescued.sort_by_key(|(id, _)| *id);
    assert_eq!(
        rescued,
        vec![(ids[0], TaskStatus::Pending), (ids[1], TaskStatus::Pending)]
    );
}

/// A connection of its own to the test schema, outside the store (another host's writer).
fn raw_client(url: &str) -> postgres::Client {
    let target = super::url::parse(url).unwrap();
    target.config.connect(postgres::NoTls).unwrap()
}

fn kinds_after(store: &PgStore, after: i64) -> Vec<String> {
    store
        .events("q", None, after, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

/// Event ids come from a sequence, and transactions commit in any order: an event whose
/// transaction took its id first but commits last must still reach a tail that read the
/// later one. A tail holds back at the gap until it fills.
#[test]
fn a_tail_is_held_at_an_event_id_still_in_flight_and_skips_nothing() {
    let Some((_dir, url)) = fresh() else { return };
    let store = open(&url);
    let id = store.enqueue("q", &[task("t", 0)]).unwrap()[0].id;
    let start = store.last_event_id().unwrap();
    let mut slow = raw_client(&url);
    let mut tx = slow.transaction().unwrap();
    tx.execute(
        "INSERT INTO events (at, queue, kind) VALUES (0, 'q', 'slow')",
        &[],
    )
    .unwrap();
    store.cancel("q", id).unwrap(); // a later id, committed first
    assert!(kinds_after(&store, start).is_empty());
    assert_eq!(store.last_event_id().unwrap(), start);
    tx.commit().unwrap();
    assert_eq!(kinds_after(&store, start), ["slow", "cancelled"]);
    assert!(store.last_event_id().unwrap() > start);
}

/// A rolled-back transaction's id never fills: the tail goes past it once it is older than
/// `SETTLE_MS`.
#[test]
fn a_rolled_back_event_id_holds_a_tail_back_only_until_it_settles() {
    let Some((_dir, url)) = fresh() else { return };
    let store = open(&url);
    let id = store.enqueue("q", &[task("t", 0)]).unwrap()[0].id;
    let start = store.last_event_id().unwrap();
    let mut aborted = raw_client(&url);
    let mut tx = aborted.transaction().unwrap();
    tx.execute(
        "INSERT INTO events (at, queue, kind) VALUES (0, 'q', 'never')",
        &[],
    )
    .unwrap();
    tx.rollback().unwrap();
    store.cancel("q", id).unwrap();
    assert!(kinds_after(&store, start).is_empty());
    std::thread::sleep(Duration::from_millis(super::events::SETTLE_MS as u64 + 300));
    assert_eq!(kinds_after(&store, start), ["cancelled"]);
}

/// After a server restart every pooled connection is closed; the first claim and the
/// first write after it succeed all the same (no failure per stale connection).
#[test]
fn calls_after_every_pooled_connection_was_closed_succeed() {
    let Some((_dir, url)) = fresh() else { return };
    let (store, admin) = (Arc::new(open(&url)), open(&url));
    store.enqueue("q", &vec![task("t", 0); 8]).unwrap();
    // Several connections in the pool, all idle afterwards.
    let barrier = Arc::new(Barrier::new(4));
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                store
                    .read(|db, _| {
                        barrier.wait(); // all four connections out at once
                        Ok(db.query_one("SELECT 1", &[])?.get::<_, i32>(0))
                    })
                    .unwrap()
            })
        })
        .collect();
    for b in busy {
        b.join().unwrap();
    }
    let pids = store.local.get().unwrap().pool.idle_backend_pids();
    assert!(pids.len() >= 4, "{pids:?}");
    // What a restart does to this store: every one of its backends goes.
    admin
        .read(|db, _| {
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid",
                &[&pids],
            )
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(store.claim("q", "w", 8, 60_000).unwrap().len(), 8);
    store.enqueue("q", &[task("t", 0)]).unwrap();
}

/// `settings` reports the server's settings and each table's dead row versions.
#[test]
fn settings_report_dead_tuples_per_table() {
    let Some((_dir, url)) = fresh() else { return };
    let store = open(&url);
    let settings: std::collections::HashMap<_, _> = store.settings().unwrap().into_iter().collect();
    assert!(settings.contains_key("server_version"), "{settings:?}");
    assert!(settings.contains_key("tasks.dead_tuples"), "{settings:?}");
}

/// TLS as libpq's modes: `prefer` falls back to plain text on a server without TLS (the
/// test server has none), `require` refuses it with a typed error, `disable` never asks.
#[test]
fn tls_modes_behave_as_libpqs_on_a_server_without_tls() {
    let Some((dir, _)) = fresh() else { return };
    let url = schema_url(dir.path());
    let sep = if url.contains('?') { '&' } else { '?' };
    for mode in ["prefer", "disable"] {
        let store = open(&format!("{url}{sep}sslmode={mode}"));
        store.enqueue("q", &[task("t", 0)]).unwrap();
    }
    let err = PgStore::open(&format!("{url}{sep}sslmode=require"), Options::default()).unwrap_err();
    assert!(matches!(err, Error::Storage(_)), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("tls") || err.to_string().contains("SSL"),
        "{err}"
    );
}

/// Enqueues NOTIFY at most once per few milliseconds per queue; one skipped in that window
/// is still heard (the listener sends it once the window has passed): a waiter woken by
/// the first of two quick enqueues is woken again by the second.
#[test]
fn a_rate_limited_enqueue_still_wakes_other_hosts() {
    let Some((_dir, url)) = fresh() else { return };
    let (writer, waiter) = (Arc::new(open(&url)), listening(&url));
    for _round in 0..5 {
        let token = waiter.change_token().unwrap();
        writer.enqueue("q", &[task("t", 0)]).unwrap();
        assert!(
            waiter
                .wait_for_change(token, Duration::from_secs(30))
                .unwrap()
        );
        // At once: within the first enqueue's window, so its own NOTIFY is skipped.
        let token = waiter.change_token().unwrap();
        writer.enqueue("q", &[task("t", 0)]).unwrap();
        assert!(
            waiter
                .wait_for_change(token, Duration::from_secs(30))
                .unwrap()
        );
    }
}
