//! Checkpoints off the commit path.
//!
//! SQLite's default copies the WAL back into the database (with an fsync) inside
//! whichever commit takes the WAL past 1,000 pages. Measured here at 45,000 tasks/s with a
//! producer and a worker process: commits took ~330 µs on average (~110 µs with this
//! thread), and the enqueue -> start p95 was 11 ms (2.6 ms with no checkpoints at all,
//! which is no option: the WAL would grow forever). So the writer's commit hook only asks this
//! process's checkpointer thread, which runs PASSIVE checkpoints on its own connection
//! (they never wait for, nor block, readers and writers); once the WAL is long, a last short
//! pass with this process's writer held lets it start over. A commit still checkpoints
//! inline if the WAL grows far past the mark (the thread fell behind), so it stays bounded.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;

use super::open::{self, Options};

/// A commit asks for a background checkpoint each time the WAL has grown by this many
/// pages (SQLite's own mark). Not on every commit past it: under a steady stream of
/// commits a checkpoint never quite catches up, and back-to-back checkpoints (two fsyncs
/// each) halved the rate of fsync'd single enqueues.
pub const BACKGROUND_AT: i32 = 1_000;
/// WAL pages after which the committing connection checkpoints itself (~16 MiB), if the
/// thread has not made the WAL start over by then (it fell behind, or another process keeps
/// writing while this one's writer is held).
pub const INLINE_AT: i32 = 4_000;
/// WAL frames from which a background checkpoint also lets the WAL start over: see
/// `Checkpointer::checkpoint`.
pub const RESTART_AT: i64 = 2_000;

#[derive(Default)]
struct State {
    requested: bool,
    closed: bool,
    thread: Option<JoinHandle<()>>,
}

/// One process's checkpointer: a thread started on the first request.
pub struct Checkpointer {
    path: PathBuf,
    options: Options,
    /// Its connection: locked while checkpointing, and by `before_fork` (no connection may
    /// cross a fork).
    pub conn: Mutex<Option<Connection>>,
    /// This process's writer connection: held while the last pass of a checkpoint runs.
    writer: OnceLock<Weak<Mutex<Option<Connection>>>>,
    state: Mutex<State>,
    wake: Condvar,
    /// Checkpoints run, for tests.
    done: std::sync::atomic::AtomicU64,
    /// Set by `go_dormant` (the store closed its connections): a request from before that
    /// must not reopen the file, which may be gone by now. The next request clears it.
    dormant: std::sync::atomic::AtomicBool,
}

impl Checkpointer {
    pub fn new(path: PathBuf, options: Options) -> Arc<Self> {
        Arc::new(Self {
            path,
            options,
            conn: Mutex::new(None),
            writer: OnceLock::new(),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            done: Default::default(),
            dormant: Default::default(),
        })
    }

    /// Makes `writer` hand its checkpoints to this checkpointer.
    pub fn attach(self: &Arc<Self>, writer: &mut Connection) -> rusqlite::Result<()> {
        let me = Arc::downgrade(self);
        let mut asked_at = 0; // WAL pages at the last request
        writer.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages| {
            if pages < asked_at {
                asked_at = 0; // the WAL started over
            }
            if pages >= INLINE_AT {
                // Best effort, like SQLite's own: a busy checkpoint is retried next commit.
                let _ = wal.checkpoint();
            } else if pages - asked_at >= BACKGROUND_AT
                && let Some(me) = me.upgrade()
            {
                asked_at = pages;
                me.request();
            }
            Ok(())
        }))
    }

    /// The writer connection whose lock `checkpoint` takes for its last pass.
    pub fn set_writer(&self, writer: Weak<Mutex<Option<Connection>>>) {
        let _ = self.writer.set(writer);
    }

    /// The store is closing (called with its writer held, so no commit asks meanwhile):
    /// requests made before must not reopen the file. The caller then closes `conn`.
    pub fn go_dormant(&self) {
        self.dormant
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Asks for a checkpoint soon; requests made while one runs are merged.
    pub fn request(self: &Arc<Self>) {
        self.dormant
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let mut state = self.state.lock();
        if state.closed || state.requested {
            return;
        }
        state.requested = true;
        if state.thread.is_none() {
            let me = self.clone();
            state.thread = std::thread::Builder::new()
                .name("ferroq-checkpoint".into())
                .spawn(move || me.run())
                .ok();
        }
        self.wake.notify_one();
    }

    /// Checkpoints run so far by the thread.
    #[cfg(test)]
    pub fn checkpoints(&self) -> u64 {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the thread (after the checkpoint in progress) and closes its connection.
    pub fn shut_down(&self) {
        let thread = {
            let mut state = self.state.lock();
            state.closed = true;
            self.wake.notify_one();
            state.thread.take()
        };
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        drop(self.conn.lock().take());
    }

    fn run(self: Arc<Self>) {
        loop {
            {
                let mut state = self.state.lock();
                while !state.requested && !state.closed {
                    self.wake.wait(&mut state);
                }
                if state.closed {
                    return;
                }
                state.requested = false;
            }
            if let Err(e) = self.checkpoint() {
                log::warn!(
                    "background checkpoint of {} failed: {e}",
                    self.path.display()
                );
                drop(self.conn.lock().take()); // reopened on the next request
            }
        }
    }

    /// Copies the WAL into the database without blocking anyone; then, once the WAL is
    /// long, copies what was committed meanwhile with this process's writer held.
    ///
    /// Why the second pass: the WAL starts over from its beginning only when a write begins
    /// with every frame of it copied, which under a steady stream of commits never happens
    /// after a pass that lets writers go on. Left to the inline backstop, the WAL grew to
    /// `INLINE_AT` and that commit's checkpoint held the writer for 6-10 ms (measured at
    /// 60,000 tasks/s in one process), long enough to queue hundreds of tasks. The second
    /// pass has only the last few milliseconds of commits to copy.
    fn checkpoint(&self) -> crate::error::Result<()> {
        let frames = self.pass()?;
        if frames >= RESTART_AT
            && let Some(writer) = self.writer.get().and_then(Weak::upgrade)
        {
            // Writer first, then our connection: the order `before_fork` takes them in.
            let _writes_wait = writer.lock();
            self.pass()?;
        }
        self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// One PASSIVE checkpoint; returns the WAL's length in frames.
    fn pass(&self) -> crate::error::Result<i64> {
        let mut slot = self.conn.lock();
        if slot.is_none() {
            if self.dormant.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(0);
            }
            *slot = Some(open::connect(&self.path, &self.options)?);
        }
        let conn = slot.as_ref().expect("opened above");
        // (busy, WAL frames, frames checkpointed): busy only means another process is
        // checkpointing, which is as good.
        let frames = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Durability, Options, SqliteStore};
    use super::INLINE_AT;
    use crate::store::Store;
    use crate::task::NewTask;

    fn store(dir: &tempfile::TempDir) -> SqliteStore {
        store_at(dir, "q.db")
    }

    fn store_at(dir: &tempfile::TempDir, name: &str) -> SqliteStore {
        let options = Options {
            durability: Durability::Normal,
            ..Options::default()
        };
        SqliteStore::open(dir.path().join(name), options).unwrap()
    }

    /// Enqueues `batches` transactions of 100 tasks of ~4 KiB (about a page each).
    fn write_pages(store: &SqliteStore, batches: usize) {
        let task = NewTask {
            payload: vec![b'x'; 4000].into(),
            max_attempts: 1,
            ..crate::store::testing::task("t", 0)
        };
        let tasks = vec![task; 100];
        for _ in 0..batches {
            store.enqueue("q", &tasks).unwrap();
        }
    }

    /// Frames in the WAL now (read through a connection of its own).
    fn wal_frames(dir: &tempfile::TempDir) -> i64 {
        let conn = rusqlite::Connection::open(dir.path().join("q.db")).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .unwrap()
    }

    #[test]
    fn commits_hand_checkpoints_to_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        write_pages(&store, 30); // ~3,000 pages: past the background mark
        let checkpointer = store.local.get().checkpointer.clone();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while checkpointer.checkpoints() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            checkpointer.checkpoints() > 0,
            "no background checkpoint ran"
        );
        // One per BACKGROUND_AT pages written, not one per commit past the mark.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let ran = checkpointer.checkpoints();
        assert!(
            ran <= 3_000 / super::BACKGROUND_AT as u64 + 1,
            "{ran} checkpoints"
        );
        assert_eq!(store.quick_check().unwrap(), vec!["ok".to_string()]);
        let counts = store.counts("q").unwrap();
        assert!(
            counts.contains(&(crate::task::TaskStatus::Pending, 3_000)),
            "{counts:?}"
        );
    }

    /// Under a steady stream of commits the WAL starts over after the checkpointer's
    /// second pass, long before the inline backstop (whose checkpoint holds the writer
    /// for milliseconds). The WAL file keeps its largest size: it tells how far it grew.
    #[test]
    fn the_wal_starts_over_without_the_inline_backstop() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        for _ in 0..30 {
            write_pages(&store, 5); // ~500 pages, then a pause: a steady rate, not a burst
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let wal = std::fs::metadata(dir.path().join("q.db-wal"))
            .unwrap()
            .len();
        let frames = (wal.saturating_sub(32) / (4096 + 24)) as i64;
        assert!(
            frames < i64::from(INLINE_AT),
            "the WAL grew to {frames} frames over 15,000 pages written"
        );
        assert!(frames >= super::RESTART_AT, "{frames} frames");
        assert_eq!(store.quick_check().unwrap(), vec!["ok".to_string()]);
    }

    /// After `close`, a checkpoint asked for before it must not reopen (or recreate) the
    /// file: the caller may have deleted it. A store used again checkpoints as before.
    #[test]
    fn a_closed_store_is_not_reopened_by_its_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        write_pages(&store, 1);
        let checkpointer = store.local.get().checkpointer.clone();
        store.close();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("q.db{suffix}")));
        }
        checkpointer.checkpoint().unwrap(); // what the thread does with an earlier request
        assert!(!dir.path().join("q.db").exists());
        assert!(checkpointer.conn.lock().is_none());

        let again = store_at(&dir, "r.db");
        let checkpointer = again.local.get().checkpointer.clone();
        again.close();
        write_pages(&again, 30); // reopened by the call; commits ask again
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while checkpointer.checkpoints() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(checkpointer.checkpoints() > 0, "no checkpoint after reuse");
    }

    #[test]
    fn a_stalled_checkpointer_does_not_let_the_wal_grow_past_the_inline_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let checkpointer = store.local.get().checkpointer.clone();
        {
            // The thread cannot checkpoint while this is held: only commits can.
            let _stalled = checkpointer.conn.lock();
            write_pages(&store, (INLINE_AT as usize) / 100 + 40);
            let frames = wal_frames(&dir);
            assert!(
                frames < i64::from(INLINE_AT) + 500,
                "{frames} frames in the WAL"
            );
            assert_eq!(checkpointer.checkpoints(), 0);
        }
    }
}
