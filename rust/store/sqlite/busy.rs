//! Waiting for another process's write lock. SQLite's own busy timeout sleeps 1 ms, then
//! 2, 5, 10... ms between tries: a claim that meets an enqueue from another process (each
//! holds the lock for tens of microseconds) would wait a whole millisecond or more. This
//! handler retries every 50 µs for the first 2 ms, then every millisecond, then every 10 ms,
//! up to the store's `busy_timeout`.

use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    /// The patience of the store this thread is calling (set before each call: the handler
    /// runs on the calling thread and SQLite gives it nothing but a retry count).
    static PATIENCE: Cell<Duration> = const { Cell::new(Duration::from_secs(30)) };
    static WAITING_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Sets how long busy waits on this thread may last.
pub fn set_patience(patience: Duration) {
    PATIENCE.with(|p| p.set(patience));
}

/// The busy handler: `true` to try again, `false` to give up (SQLITE_BUSY).
pub fn handler(retries: i32) -> bool {
    let now = Instant::now();
    let since = WAITING_SINCE.with(|s| {
        if retries == 0 || s.get().is_none() {
            s.set(Some(now));
        }
        s.get().unwrap_or(now)
    });
    let waited = now - since;
    let patience = PATIENCE.with(Cell::get);
    if waited >= patience {
        return false;
    }
    let pause = if waited < Duration::from_millis(2) {
        Duration::from_micros(50)
    } else if waited < Duration::from_millis(100) {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(10)
    };
    std::thread::sleep(pause.min(patience - waited));
    true
}

#[cfg(test)]
mod tests {
    use super::super::{Options, SqliteStore};
    use super::*;
    use crate::store::Store;
    use crate::task::NewTask;

    fn new_task() -> NewTask<'static> {
        NewTask {
            max_attempts: 1,
            ..crate::store::testing::task("t", 0)
        }
    }

    /// Another connection holds the write lock for `hold`; returns whether an enqueue
    /// with a patience of 300 ms got through, and how long it took.
    fn enqueue_while_locked(hold: Duration) -> (bool, Duration) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let holder = SqliteStore::open(&path, Options::default()).unwrap();
        let patient = Options {
            busy_timeout: Duration::from_millis(300),
            ..Options::default()
        };
        let writer = SqliteStore::open(&path, patient).unwrap();
        std::thread::scope(|s| {
            let (locked_tx, locked_rx) = std::sync::mpsc::channel();
            s.spawn(move || {
                holder
                    .with_conn(
                        |l| &l.writer,
                        |conn| {
                            conn.execute_batch("BEGIN IMMEDIATE")?;
                            locked_tx.send(()).unwrap();
                            std::thread::sleep(hold);
                            conn.execute_batch("COMMIT")?;
                            Ok(())
                        },
                    )
                    .unwrap();
            });
            locked_rx.recv().unwrap();
            let start = Instant::now();
            let ok = writer.enqueue("q", &[new_task()]).is_ok();
            (ok, start.elapsed())
        })
    }

    #[test]
    fn a_writer_waits_for_the_lock_then_gets_it_or_gives_up_at_its_patience() {
        let (ok, took) = enqueue_while_locked(Duration::from_millis(50));
        assert!(ok && took >= Duration::from_millis(40), "{took:?}");
        let (ok, took) = enqueue_while_locked(Duration::from_millis(800));
        assert!(
            !ok && took >= Duration::from_millis(290) && took < Duration::from_millis(700),
            "{took:?}"
        );
    }

    #[test]
    fn retries_quickly_then_gives_up_at_the_patience() {
        set_patience(Duration::from_millis(30));
        let start = Instant::now();
        let mut retries = 0;
        while handler(retries) {
            retries += 1;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(30) && took < Duration::from_millis(200),
            "{took:?}"
        );
        assert!(retries > 20, "short sleeps first: {retries} retries");
    }
}
