//! Finished tasks carried to another store (`ferroq migrate --history`): read back there as
//! they were read here, records and histories alike.

use super::{LEASE, Q, fixture, task};
use crate::error::Error;
use crate::store::Engine;
use crate::task::{FailAction, NewTask, TaskRecord, TaskStatus};

/// A finished task of every kind: completed after a retry (with progress and a result),
/// completed with a unique key, dead, cancelled, and one with a payload stored apart by the
/// SQLite engine. A pending task is left too (not exported).
fn finished_tasks(store: &dyn Engine, clock: &crate::clock::ManualClock) -> Vec<i64> {
    let big = vec![7_u8; 5000];
    let e = store
        .enqueue(
            Q,
            &[
                task("retried", 3),
                NewTask {
                    unique_key: Some("key-1".into()),
                    ..task("keyed", 0)
                },
                task("dies", 0),
                task("cancelled", 0),
                NewTask {
                    payload: big.into(),
                    ..task("big", -2)
                },
                task("left", -5),
            ],
        )
        .unwrap();
    let ids: Vec<i64> = e.iter().map(|x| x.id).collect();
    let first = store.claim(Q, "w1", 1, LEASE).unwrap().remove(0);
    assert_eq!(first.id, ids[0]);
    clock.advance(5);
    let retry = FailAction::Retry { delay_ms: 0 };
    store.fail(ids[0], first.token, "{\"e\":1}", retry).unwrap();
    clock.advance(5);
    let again = store.claim(Q, "w2", 1, LEASE).unwrap().remove(0);
    store
        .progress(ids[0], again.token, 0.5, Some("half"))
        .unwrap();
    clock.advance(5);
    store.complete(ids[0], again.token, b"\"done\"").unwrap();
    for (worker, id) in [("w3", ids[1]), ("w4", ids[2])] {
        let t = store.claim(Q, worker, 1, LEASE).unwrap().remove(0);
        assert_eq!(t.id, id);
        clock.advance(7);
        if id == ids[1] {
            store.complete(id, t.token, b"1").unwrap();
        } else {
            store
                .fail(id, t.token, "{\"fatal\":true}", FailAction::Dead)
                .unwrap();
        }
    }
    store.cancel(Q, ids[3]).unwrap();
    let t = store.claim(Q, "w5", 1, LEASE).unwrap().remove(0);
    assert_eq!(t.id, ids[4]);
    store.complete(ids[4], t.token, &[9_u8; 3000]).unwrap();
    ids
}

fn without_id(mut r: TaskRecord) -> TaskRecord {
    r.id = 0;
    r
}

#[test]
fn imported_finished_tasks_read_back_as_they_were() {
    let Some(src) = fixture() else { return };
    let Some(dst) = fixture() else { return };
    let ids = finished_tasks(&*src.store, &src.clock);
    let exported = src.store.export_finished(Q, 0, i64::MAX, 100).unwrap();
    let exported_ids: Vec<i64> = exported.iter().map(|t| t.record.id).collect();
    assert_eq!(exported_ids, ids[..5], "finished tasks only, in id order");
    // A task already on DST: imported ones take new ids after it, in order.
    let before = dst.store.enqueue(Q, &[task("already", 0)]).unwrap()[0].id;
    dst.clock.advance(1_000_000);
    let new_ids = dst.store.import_finished(Q, &exported).unwrap();
    assert_eq!(new_ids.len(), 5);
    assert!(new_ids.windows(2).all(|w| w[0] < w[1]) && new_ids[0] > before);
    for (old, new) in ids.iter().zip(&new_ids) {
        let was = src.store.get(Q, *old).unwrap();
        let now = dst.store.get(Q, *new).unwrap();
        assert_eq!(without_id(now), without_id(was), "task {old}");
        assert_eq!(
            dst.store.history(Q, *new).unwrap(),
            src.store.history(Q, *old).unwrap(),
            "history of task {old}"
        );
    }
    // Finished: nothing to claim, counted as finished, and the key is free for a new task.
    assert!(
        dst.store.claim(Q, "w", 10, LEASE).unwrap().len() == 1,
        "only 'already'"
    );
    let keyed = NewTask {
        unique_key: Some("key-1".into()),
        ..task("keyed", 0)
    };
    assert!(dst.store.enqueue(Q, &[keyed]).unwrap()[0].created);
    let counts = dst.store.counts(Q).unwrap();
    let count = |s| counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
    assert_eq!(count(TaskStatus::Completed), 3);
    assert_eq!(count(TaskStatus::Dead), 1);
    assert_eq!(count(TaskStatus::Cancelled), 1);
}

#[test]
fn an_import_with_an_unfinished_task_writes_nothing() {
    let Some(src) = fixture() else { return };
    let Some(dst) = fixture() else { return };
    finished_tasks(&*src.store, &src.clock);
    let mut tasks = src.store.export_finished(Q, 0, i64::MAX, 100).unwrap();
    let mut running = tasks[0].clone();
    running.record.status = TaskStatus::Running;
    tasks.push(running);
    let err = dst.store.import_finished(Q, &tasks).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(dst.store.counts(Q).unwrap().iter().all(|(_, n)| *n == 0));
    // `until` bounds an export.
    let first = src
        .store
        .export_finished(Q, 0, tasks[1].record.id, 100)
        .unwrap();
    assert_eq!(first.len(), 2);
}
