//! Stores dropped without `close()` close on threads of their own, and forks wait for them.
//!
//! Closing takes milliseconds (SQLite checkpoints on the last close; the checkpointer thread
//! is joined), and a queue nobody closed is dropped by whichever garbage collection finds it,
//! in the middle of other work (measured: collections of 22-29 ms in a worker process). So
//! the close runs on a thread of its own; everything it closes was committed already.
//!
//! Such a thread is inside SQLite without any store lock that `before_fork` could take, and
//! a child forked meanwhile inherits whatever SQLite-global lock it held, held by a thread
//! the child does not have: the child's first open then waits forever (seen: a forked test
//! child hung in the full suite). So `hold_closes` (called just before every fork) waits
//! for closes in flight and keeps new ones waiting until `release_closes`. Plain atomics,
//! not a lock: a child inherits their values, never a lock's waiters.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

static CLOSES_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static FORKING: AtomicBool = AtomicBool::new(false);

/// Drops `store` on a new thread (on this one if no thread can be started): the last
/// reference to a `SqliteStore` closes it there.
pub fn close_in_background<T: Send + 'static>(store: T) {
    let spawned = std::thread::Builder::new()
        .name("ferroq-close".into())
        .spawn(move || {
            enter();
            drop(store);
            CLOSES_IN_FLIGHT.fetch_sub(1, SeqCst);
        });
    if let Err(e) = spawned {
        log::warn!("closing a store on this thread: no thread for it ({e})");
    }
}

/// Counts this close in, once no fork is being prepared. The count goes up before the
/// flag is read again, and `hold_closes` sets the flag before reading the count: one of
/// the two always sees the other.
fn enter() {
    loop {
        while FORKING.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        CLOSES_IN_FLIGHT.fetch_add(1, SeqCst);
        if !FORKING.load(SeqCst) {
            return;
        }
        CLOSES_IN_FLIGHT.fetch_sub(1, SeqCst);
    }
}

/// Just before `fork()`: waits until no dropped store is closing, and keeps new closes
/// waiting until `release_closes`. (From Python: with the GIL released, as a close may log.)
pub fn hold_closes() {
    FORKING.store(true, SeqCst);
    while CLOSES_IN_FLIGHT.load(SeqCst) > 0 {
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Right after `fork()`, in the parent and in the child: closes may go on.
pub fn release_closes() {
    FORKING.store(false, SeqCst);
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use super::*;

    #[test]
    fn a_held_fork_waits_for_closes_and_holds_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let open =
            |name: &str| SqliteStore::open(dir.path().join(name), Default::default()).unwrap();
        FORKING.store(true, SeqCst);
        close_in_background(open("a.db"));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            CLOSES_IN_FLIGHT.load(SeqCst),
            0,
            "a close waits while a fork is prepared"
        );
        assert!(dir.path().join("a.db-wal").exists(), "not closed yet");
        release_closes();
        // The close thread removes the WAL file, then counts itself out: wait for both.
        let closed = || !dir.path().join("a.db-wal").exists();
        let counted_out = || CLOSES_IN_FLIGHT.load(SeqCst) == 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(closed() && counted_out()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(closed(), "closed once the fork is done");
        assert!(counted_out(), "the close counted itself out");
    }
}
