//! A file watch on the WAL (Linux inotify): a commit by any process writes the `-wal` file,
//! which wakes this process's waiters at once instead of at their next `data_version` check.
//!
//! One watcher per process (one inotify instance, one thread), shared by every store; a
//! store subscribes the first time something waits on it. The WAL write comes just before
//! the commit is published in the WAL index, so a woken waiter may still see the old
//! `data_version`: the watcher pokes again shortly after, and the waiters' own checks
//! (see `wakeup`) remain the fallback. Without inotify (other systems, or the per-user
//! limit reached) nothing changes but the wake-up delay.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::wakeup::Changes;

/// The second poke, for a waiter that looked before the commit was published.
const REPOKE_AFTER: Duration = Duration::from_micros(100);

type Subscribers = HashMap<i32, Vec<(OsString, Weak<Changes>)>>;

struct Watcher {
    pid: u32,
    #[cfg(target_os = "linux")]
    watches: Mutex<inotify::Watches>,
    subscribers: Arc<Mutex<Subscribers>>,
}

/// This process's watcher (made afresh in a forked child, like `local::PerProcess`: the
/// parent's thread does not exist there and its locks must not be touched).
static WATCHER: AtomicPtr<Option<Watcher>> = AtomicPtr::new(std::ptr::null_mut());

fn watcher() -> Option<&'static Watcher> {
    let pid = std::process::id();
    let current = WATCHER.load(Ordering::Acquire);
    if !current.is_null() {
        // SAFETY: stored pointers come from Box::leak and are never freed.
        let existing = unsafe { &*current };
        if existing.as_ref().is_none_or(|w| w.pid == pid) {
            return existing.as_ref();
        }
    }
    let fresh: &'static mut Option<Watcher> = Box::leak(Box::new(start(pid)));
    match WATCHER.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => fresh.as_ref(),
        // Another thread started one first (its thread keeps ours from mattering).
        // SAFETY: as above.
        Err(winner) => unsafe { &*winner }.as_ref(),
    }
}

#[cfg(target_os = "linux")]
fn start(pid: u32) -> Option<Watcher> {
    use inotify::Inotify;
    let mut inotify = Inotify::init().ok()?;
    let watches = inotify.watches();
    let subscribers: Arc<Mutex<Subscribers>> = Arc::default();
    let feed = subscribers.clone();
    let spawned = std::thread::Builder::new()
        .name("ferroq-watch".into())
        .spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                let Ok(events) = inotify.read_events_blocking(&mut buffer) else {
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                };
                let mut woken: Vec<Arc<Changes>> = Vec::new();
                {
                    let mut subs = feed.lock();
                    for event in events {
                        let wd = event.wd.get_watch_descriptor_id();
                        if event.mask.contains(inotify::EventMask::IGNORED) {
                            subs.remove(&wd); // the directory is gone
                            continue;
                        }
                        let (Some(name), Some(list)) = (event.name, subs.get_mut(&wd)) else {
                            continue;
                        };
                        list.retain(|(_, weak)| weak.strong_count() > 0);
                        for (wal, weak) in list.iter() {
                            if wal.as_os_str() == name
                                && let Some(changes) = weak.upgrade()
                            {
                                changes.poke();
                                woken.push(changes);
                            }
                        }
                    }
                }
                if !woken.is_empty() {
                    std::thread::sleep(REPOKE_AFTER);
                    for changes in woken {
                        changes.poke();
                    }
                }
            }
        });
    spawned.ok()?;
    Some(Watcher {
        pid,
        watches: Mutex::new(watches),
        subscribers,
    })
}

#[cfg(not(target_os = "linux"))]
fn start(pid: u32) -> Option<Watcher> {
    let _ = pid;
    None
}

/// Wakes `changes` whenever the WAL of the database at `path` is written. Returns whether
/// the watch is in place (false: waiters rely on their own checks).
pub fn subscribe(path: &Path, changes: &Arc<Changes>) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Some(w) = watcher() else {
            return false;
        };
        let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
            return false;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let mut wal = file.to_os_string();
        wal.push("-wal");
        let Ok(wd) = w.watches.lock().add(
            dir,
            inotify::WatchMask::MODIFY | inotify::WatchMask::ONLYDIR,
        ) else {
            return false;
        };
        w.subscribers
            .lock()
            .entry(wd.get_watch_descriptor_id())
            .or_default()
            .push((wal, Arc::downgrade(changes)));
        true
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (path, changes, watcher());
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::super::{Options, SqliteStore};
    use crate::store::Store;
    use crate::task::NewTask;
    use std::time::{Duration, Instant};

    /// Two stores (two processes' worth of connections) on one new file.
    fn two_stores() -> (tempfile::TempDir, SqliteStore, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let first = SqliteStore::open(&path, Options::default()).unwrap();
        let second = SqliteStore::open(&path, Options::default()).unwrap();
        (dir, first, second)
    }

    fn one_task() -> NewTask<'static> {
        NewTask {
            max_attempts: 1,
            ..crate::store::testing::task("t", 0)
        }
    }

    #[test]
    fn a_commit_through_another_connection_wakes_a_watching_store() {
        let (_dir, watching, other) = two_stores();
        let token = watching.change_token().unwrap();
        // The first wait subscribes this store to the watch.
        assert!(!watching.wait_for_change(token, Duration::ZERO).unwrap());
        let changes = &watching.local.get().changes;
        let before = changes.pokes();
        other.enqueue("q", &[one_task()]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while changes.pokes() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            changes.pokes() > before,
            "the WAL write woke the watching store"
        );
        assert!(
            watching
                .wait_for_change(token, Duration::from_secs(5))
                .unwrap()
        );
    }

    /// The token a caller can have without waiting is the same token, and when the reader
    /// is busy (or not open yet) there is none: the caller must wait the usual way.
    #[test]
    fn a_token_without_waiting_or_none() {
        let (_dir, store, other) = two_stores();
        assert!(
            store.try_change_token().is_none(),
            "the reader is not open yet"
        );
        let before = store.change_token().unwrap();
        assert_eq!(store.try_change_token().unwrap().unwrap(), before);
        other.enqueue("q", &[one_task()]).unwrap();
        let after = store.try_change_token().unwrap().unwrap();
        assert_ne!(after, before, "another connection's commit shows");
        store.enqueue("q", &[one_task()]).unwrap();
        assert_ne!(store.try_change_token().unwrap().unwrap(), after);
        let reader = store.local.get().reader.lock();
        assert!(store.try_change_token().is_none(), "the reader is busy");
        drop(reader);
        assert!(store.try_change_token().is_some());
    }
}
