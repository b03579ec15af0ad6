//! What a store keeps per process: connections, group commit and wake-up state.
//!
//! After `fork()` the child must use none of it: SQLite forbids carrying a connection
//! across a fork, and a lock held (or waited on) by a parent thread would never be
//! released in the child, where that thread does not exist. So a child that finds the
//! pid changed builds its own `Local` and leaves the parent's untouched (leaked: freeing
//! it could close the parent's connections and drop its file locks).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering};

use parking_lot::Mutex;
use rusqlite::Connection;

use super::checkpoint::Checkpointer;
use super::open::Options;
use super::wakeup::Changes;
use crate::metrics::Recorder;
use crate::store::group_commit::GroupCommit;
use crate::task::{Enqueued, NewTask};

/// One process's share of a store.
pub struct Local {
    pub pid: u32,
    /// Shared with the checkpointer, which holds it to keep this process's writes out while
    /// it finishes a checkpoint (see `Checkpointer::checkpoint`).
    pub writer: Arc<Mutex<Option<Connection>>>,
    pub reader: Mutex<Option<Connection>>,
    pub enqueues: GroupCommit<(String, Vec<NewTask<'static>>), Vec<Enqueued>>,
    pub changes: Arc<Changes>,
    /// Whether `changes` is subscribed to the file watch (done once, on the first wait).
    pub watched: std::sync::Once,
    /// This process's counters and histograms (a child starts from zero).
    pub metrics: Mutex<Recorder>,
    /// When `metrics` was last flushed (store clock; 0: not yet looked at).
    /// Moves the WAL into the database off the commit path.
    pub checkpointer: Arc<Checkpointer>,
}

impl Local {
    fn new(writer: Option<Connection>, checkpointer: Arc<Checkpointer>) -> Self {
        let writer = Arc::new(Mutex::new(writer));
        checkpointer.set_writer(Arc::downgrade(&writer));
        Self {
            pid: std::process::id(),
            writer,
            reader: Mutex::new(None),
            enqueues: GroupCommit::new(),
            changes: Arc::default(),
            watched: std::sync::Once::new(),
            metrics: Mutex::new(Recorder::default()),
            checkpointer,
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.checkpointer.shut_down();
    }
}

/// The current process's `Local`, made afresh in a forked child.
pub struct PerProcess {
    current: AtomicPtr<Local>,
    path: PathBuf,
    options: Options,
}

impl PerProcess {
    /// Starts with this process's `Local`, holding an already open writer connection.
    pub fn new(mut writer: Connection, path: PathBuf, options: Options) -> rusqlite::Result<Self> {
        let checkpointer = Checkpointer::new(path.clone(), options.clone());
        checkpointer.attach(&mut writer)?;
        let local = Local::new(Some(writer), checkpointer);
        Ok(Self {
            current: AtomicPtr::new(Box::into_raw(Box::new(local))),
            path,
            options,
        })
    }

    /// This process's `Local`.
    pub fn get(&self) -> &Local {
        let current = self.current.load(Ordering::Acquire);
        // SAFETY: the pointer always comes from Box::into_raw and is freed only in Drop,
        // when no borrow of `self` remains.
        let local = unsafe { &*current };
        if local.pid == std::process::id() {
            return local;
        }
        let checkpointer = Checkpointer::new(self.path.clone(), self.options.clone());
        let fresh = Box::into_raw(Box::new(Local::new(None, checkpointer)));
        match self
            .current
            .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            // The parent's Local is leaked on purpose (see the module comment).
            // SAFETY: `fresh` is now owned by `self`, like every stored pointer.
            Ok(_) => unsafe { &*fresh },
            Err(winner) => {
                // Another thread of this child got there first; use its Local.
                // SAFETY: `fresh` was never shared; `winner` is a stored pointer.
                drop(unsafe { Box::from_raw(fresh) });
                unsafe { &*winner }
            }
        }
    }
}

impl Drop for PerProcess {
    fn drop(&mut self) {
        let current = *self.current.get_mut();
        // SAFETY: stored pointers come from Box::into_raw; we have exclusive access.
        if unsafe { &*current }.pid == std::process::id() {
            drop(unsafe { Box::from_raw(current) });
        }
    }
}
