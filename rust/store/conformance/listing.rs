//! Operations: listings, bulk requeue and purge, claims restricted to groups.

use super::{LEASE, Q, fixture, ids, task};
use crate::clock::Clock;
use crate::policy::throttle::ThrottleConfig;
use crate::resource_group::GroupConfig;
use crate::store::operations::{Finished, Page, PendingTasks, TaskFilter};
use crate::task::{FailAction, NewTask, TaskStatus};

fn in_group(group: &str, priority: i64) -> NewTask<'_> {
    NewTask {
        resource_group: group.into(),
        ..task("t", priority)
    }
}

fn page(after: Option<i64>, newest_first: bool, limit: usize) -> Page {
    Page {
        after,
        newest_first,
        limit,
        until: None,
    }
}

/// `until` ends the page at that id, full or not, both ways: a caller can read a bounded
/// window of ids at a time.
#[test]
fn a_listing_page_stops_at_until() {
    let Some(f) = fixture() else { return };
    let e = f
        .store
        .enqueue(Q, &[task("t", 0), task("t", 0), task("t", 0), task("t", 0)])
        .unwrap();
    let all: Vec<i64> = e.iter().map(|x| x.id).collect();
    let none = TaskFilter::default();
    let listed = |p: Page| -> Vec<i64> {
        f.store
            .list(Q, &none, p)
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect()
    };
    let up = Page {
        until: Some(all[1]),
        ..page(None, false, 10)
    };
    assert_eq!(listed(up), vec![all[0], all[1]]);
    let down = Page {
        until: Some(all[2]),
        ..page(Some(all[3]), true, 10)
    };
    assert_eq!(listed(down), vec![all[2]]);
    let empty = Page {
        until: Some(all[3]),
        ..page(Some(all[3]), false, 10)
    };
    assert_eq!(listed(empty), Vec::<i64>::new());
}

fn dead(status: TaskStatus) -> Finished {
    Finished {
        status,
        finished_before: None,
        group: None,
        name: None,
    }
}

/// Claims everything ready and fails it fatally.
fn kill_all(f: &super::Fixture) {
    for t in f.store.claim(Q, "w", 1000, LEASE).unwrap() {
        f.store.fail(t.id, t.token, "{}", FailAction::Dead).unwrap();
    }
}

#[test]
fn listing_pages_by_id_both_ways_with_filters() {
    let Some(f) = fixture() else { return };
    let e = f
        .store
        .enqueue(
            Q,
            &[
                in_group("a", 0),
                in_group("b", 0),
                in_group("a", 9),
                task("other", 0),
            ],
        )
        .unwrap();
    let all: Vec<i64> = e.iter().map(|x| x.id).collect();
    let none = TaskFilter::default();
    let first = f.store.list(Q, &none, page(None, false, 2)).unwrap();
    let second = f
        .store
        .list(Q, &none, page(Some(first[1].id), false, 2))
        .unwrap();
    let got: Vec<i64> = first.iter().chain(&second).map(|t| t.id).collect();
    assert_eq!(got, all);
    let newest = f.store.list(Q, &none, page(None, true, 3)).unwrap();
    assert_eq!(
        newest.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![all[3], all[2], all[1]]
    );
    let of_a = TaskFilter {
        group: Some("a".into()),
        ..TaskFilter::default()
    };
    let a: Vec<i64> = f
        .store
        .list(Q, &of_a, page(None, false, 10))
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(a, vec![all[0], all[2]]);
    let named = TaskFilter {
        name: Some("other".into()),
        ..TaskFilter::default()
    };
    assert_eq!(
        f.store.list(Q, &named, page(None, false, 10)).unwrap()[0].id,
        all[3]
    );
    // The highest priority task runs; only it is running.
    let claimed = f.store.claim(Q, "w", 1, LEASE).unwrap();
    let running = TaskFilter {
        statuses: vec![TaskStatus::Running],
        ..TaskFilter::default()
    };
    let listed = f.store.list(Q, &running, page(None, false, 10)).unwrap();
    assert_eq!(
        ids(&claimed),
        listed.iter().map(|t| t.id).collect::<Vec<_>>()
    );
    assert!(
        f.store
            .list("elsewhere", &none, page(None, false, 10))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn purge_deletes_only_what_matches_in_batches() {
    let Some(f) = fixture() else { return };
    f.store
        .enqueue(Q, &[task("x", 0), task("x", 0), task("y", 0)])
        .unwrap();
    let claimed = f.store.claim(Q, "w", 10, LEASE).unwrap();
    f.store
        .complete(claimed[0].id, claimed[0].token, b"1")
        .unwrap();
    f.clock.advance(10_000);
    let cutoff = f.clock.now_ms();
    f.store
        .complete(claimed[1].id, claimed[1].token, b"2")
        .unwrap();
    f.store
        .fail(claimed[2].id, claimed[2].token, "{}", FailAction::Dead)
        .unwrap();
    f.store.enqueue(Q, &[task("x", 0)]).unwrap();

    let old = Finished {
        finished_before: Some(cutoff),
        ..dead(TaskStatus::Completed)
    };
    assert_eq!(f.store.count_finished(Q, &old).unwrap(), 1);
    assert_eq!(
        f.store
            .count_finished(Q, &dead(TaskStatus::Completed))
            .unwrap(),
        2
    );
    let step = f.store.purge_batch(Q, &old, None, 10).unwrap();
    assert_eq!((step.done, step.next), (1, None));
    assert!(f.store.get(Q, claimed[0].id).is_err());
    // Small batches hand back a cursor until nothing is left.
    let all_completed = dead(TaskStatus::Completed);
    f.store.enqueue(Q, &[task("z", 0)]).unwrap();
    let more = f.store.claim(Q, "w", 10, LEASE).unwrap();
    for t in &more {
        f.store.complete(t.id, t.token, b"null").unwrap();
    }
    let (mut total, mut cursor) = (0, None);
    loop {
        let step = f.store.purge_batch(Q, &all_completed, cursor, 1).unwrap();
        total += step.done;
        cursor = step.next;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(total, 3);
    let counts = f.store.counts(Q).unwrap();
    assert!(
        counts.contains(&(TaskStatus::Dead, 1)) && counts.contains(&(TaskStatus::Completed, 0))
    );
    let pending = dead(TaskStatus::Pending);
    assert!(f.store.purge_batch(Q, &pending, None, 10).is_err());
}

#[test]
fn requeue_batch_revives_dead_tasks_and_skips_held_unique_keys() {
    let Some(f) = fixture() else { return };
    let keyed = NewTask {
        unique_key: Some("k".into()),
        ..task("t", 0)
    };
    f.store
        .enqueue(Q, &[keyed.clone(), in_group("a", 0), in_group("b", 0)])
        .unwrap();
    kill_all(&f);
    // A new task takes the unique key: requeueing the dead holder would break it.
    let holder = f.store.enqueue(Q, &[keyed]).unwrap()[0].id;
    let of_b = Finished {
        group: Some("b".into()),
        ..dead(TaskStatus::Dead)
    };
    assert_eq!(f.store.requeue_batch(Q, &of_b, None, 10).unwrap().done, 1);
    let step = f
        .store
        .requeue_batch(Q, &dead(TaskStatus::Dead), None, 10)
        .unwrap();
    assert_eq!(step.done, 1);
    assert_eq!(step.skipped.len(), 1);
    let counts = f.store.counts(Q).unwrap();
    assert!(counts.contains(&(TaskStatus::Pending, 3)) && counts.contains(&(TaskStatus::Dead, 1)));
    let revived = f.store.claim(Q, "w", 10, LEASE).unwrap();
    assert!(revived.iter().all(|t| t.attempt == 1));
    assert!(revived.iter().any(|t| t.id == holder));
    assert!(
        f.store
            .requeue_batch(Q, &dead(TaskStatus::Completed), None, 10)
            .is_err()
    );
}

/// A bulk cancel takes every matching pending task, ready or delayed, over several batches,
/// each as a single cancel would (history, counts); it leaves running tasks, other groups and
/// queues, and tasks enqueued after it began (so it ends under a busy producer).
#[test]
fn cancel_batch_takes_the_matching_pending_tasks_present_when_it_began() {
    let Some(f) = fixture() else { return };
    let later = f.clock.now_ms() + 60_000;
    let delayed = NewTask {
        run_at: Some(later),
        ..in_group("a", 0)
    };
    let running = f.store.enqueue(Q, &[in_group("a", 9)]).unwrap()[0].id;
    f.store.claim(Q, "w", 1, LEASE).unwrap();
    let e = f
        .store
        .enqueue(
            Q,
            &[
                in_group("a", 0),
                in_group("b", 0),
                delayed.clone(),
                in_group("a", 3),
                in_group("a", 0),
            ],
        )
        .unwrap();
    f.store.enqueue("other", &[in_group("a", 0)]).unwrap();
    let of_a = PendingTasks {
        group: Some("a".into()),
        name: None,
    };
    assert_eq!(f.store.count_pending(Q, &of_a).unwrap(), 4);
    assert_eq!(
        f.store.count_pending(Q, &PendingTasks::default()).unwrap(),
        5
    );

    let first = f.store.cancel_batch(Q, &of_a, None, 2).unwrap();
    assert_eq!(first.done, 2);
    let at = first.next.expect("a full batch goes on");
    // Enqueued after the bulk cancel began: not its business.
    let newcomer = f.store.enqueue(Q, &[in_group("a", 0)]).unwrap()[0].id;
    let mut done = first.done;
    let mut next = Some(at);
    while let Some(at) = next {
        let step = f.store.cancel_batch(Q, &of_a, Some(at), 2).unwrap();
        done += step.done;
        next = step.next;
    }
    assert_eq!(done, 4);
    let status = |id| f.store.get(Q, id).unwrap().status;
    for id in [e[0].id, e[2].id, e[3].id, e[4].id] {
        assert_eq!(status(id), TaskStatus::Cancelled);
        let history = f.store.history(Q, id).unwrap();
        let last = history.last().unwrap();
        assert_eq!(
            (last.from, last.to),
            (Some(TaskStatus::Pending), TaskStatus::Cancelled)
        );
    }
    assert_eq!(status(e[1].id), TaskStatus::Pending); // group b
    assert_eq!(status(newcomer), TaskStatus::Pending);
    assert_eq!(status(running), TaskStatus::Running);
    assert_eq!(f.store.count_pending("other", &of_a).unwrap(), 1);
    assert_eq!(f.store.count_pending(Q, &of_a).unwrap(), 1);
    // By name: nothing of that name, nothing done, done at once.
    let by_name = PendingTasks {
        group: None,
        name: Some("nobody".into()),
    };
    let step = f.store.cancel_batch(Q, &by_name, None, 10).unwrap();
    assert_eq!((step.done, step.next), (0, None));
}

#[test]
fn claims_restricted_to_groups_take_only_those_and_keep_their_limits() {
    let Some(f) = fixture() else { return };
    let e = f
        .store
        .enqueue(
            Q,
            &[
                in_group("a", 0),
                in_group("b", 5),
                in_group("c", 9),
                in_group("a", 1),
                in_group("b", 0),
            ],
        )
        .unwrap();
    let only = vec!["a".to_string(), "b".to_string()];
    // Unlimited groups: best first across the chosen groups, c never.
    let got = f.store.claim_in_groups(Q, &only, "w", 2, LEASE).unwrap();
    assert_eq!(ids(&got), vec![e[1].id, e[3].id]);
    // A cap of 1 on "a", with one of its tasks running: "a" gives nothing now.
    let capped = GroupConfig {
        breaker: None,
        throttle: Some(ThrottleConfig {
            rate: None,
            burst: 1.0,
            max_concurrency: Some(1),
            adaptive: None,
        }),
    };
    f.store.configure_group(Q, "a", &capped).unwrap();
    let got = f.store.claim_in_groups(Q, &only, "w", 10, LEASE).unwrap();
    assert_eq!(ids(&got), vec![e[4].id]);
    // A paused group gives nothing; a paused queue nothing at all.
    f.store.set_group_paused(Q, "c", true).unwrap();
    assert!(
        f.store
            .claim_in_groups(Q, &["c".into()], "w", 10, LEASE)
            .unwrap()
            .is_empty()
    );
    f.store.set_group_paused(Q, "c", false).unwrap();
    f.store.set_queue_paused(Q, true).unwrap();
    assert!(
        f.store
            .claim_in_groups(Q, &["c".into()], "w", 10, LEASE)
            .unwrap()
            .is_empty()
    );
    f.store.set_queue_paused(Q, false).unwrap();
    assert_eq!(
        ids(&f
            .store
            .claim_in_groups(Q, &["c".into()], "w", 10, LEASE)
            .unwrap()),
        vec![e[2].id]
    );
    assert!(f.store.claim_in_groups(Q, &[], "w", 10, LEASE).is_err());
    assert!(
        f.store
            .claim_in_groups(Q, &["".into()], "w", 10, LEASE)
            .is_err()
    );
}

#[test]
fn queue_names_lists_queues_with_tasks_or_settings() {
    let Some(f) = fixture() else { return };
    f.store.enqueue("one", &[task("t", 0)]).unwrap();
    f.store.set_queue_paused("two", true).unwrap();
    f.store.enqueue(Q, &[task("t", 0)]).unwrap();
    kill_all(&f);
    assert_eq!(
        f.store.queue_names().unwrap(),
        vec!["default", "one", "two"]
    );
}

#[test]
fn task_names_like_matches_whole_names_or_suffixes_at_a_dot() {
    let Some(f) = fixture() else { return };
    let names = [
        "shop.tasks.charge",
        "billing.charge",
        "recharge",
        "charge",
        "x.Charge",
        "a_b.c",
    ];
    let tasks: Vec<NewTask<'_>> = names.iter().map(|n| task(n, 0)).collect();
    f.store.enqueue(Q, &tasks).unwrap();
    f.store
        .enqueue("other", &[task("other.charge", 0)])
        .unwrap();
    assert_eq!(
        f.store.task_names_like(Q, "charge").unwrap(),
        ["billing.charge", "charge", "shop.tasks.charge"]
    );
    assert_eq!(
        f.store.task_names_like(Q, "tasks.charge").unwrap(),
        ["shop.tasks.charge"]
    );
    assert!(f.store.task_names_like(Q, "arge").unwrap().is_empty());
    assert!(f.store.task_names_like(Q, "a%b.c").unwrap().is_empty());
}
