//! What a store keeps per process: its connections, wake-ups and metrics. A forked child
//! must not use its parent's connections (the sockets are shared with the parent), so a
//! child that finds the pid changed builds its own and leaves the parent's untouched.

use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering};

use parking_lot::Mutex;

use super::pool::Pool;
use super::url::Target;
use super::wakeup::Wakeup;
use crate::error::Result;
use crate::metrics::Recorder;
use crate::store::group_commit::GroupCommit;
use crate::task::{Enqueued, NewTask};

/// An enqueue waiting to share a transaction (see `store::group_commit`).
pub type EnqueueRequest = (String, Vec<NewTask<'static>>);

pub struct Local {
    pub pid: u32,
    pub pool: Arc<Pool>,
    /// Small concurrent enqueues share one transaction (and one NOTIFY, which serialises
    /// commits on the server).
    pub enqueues: GroupCommit<EnqueueRequest, Vec<Enqueued>>,
    pub wakeup: Arc<Wakeup>,
    pub metrics: Mutex<Recorder>,
}

impl Local {
    fn new(target: &Target) -> Result<Self> {
        Ok(Self {
            pid: std::process::id(),
            pool: Arc::new(Pool::new(target.clone())?),
            enqueues: GroupCommit::new(),
            wakeup: Arc::default(),
            metrics: Mutex::new(Recorder::default()),
        })
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.wakeup.stop();
    }
}

pub struct PerProcess {
    current: AtomicPtr<Local>,
    target: Target,
}

impl PerProcess {
    pub fn new(target: Target) -> Result<Self> {
        let local = Local::new(&target)?;
        Ok(Self {
            current: AtomicPtr::new(Box::into_raw(Box::new(local))),
            target,
        })
    }

    /// This process's `Local`.
    pub fn get(&self) -> Result<&Local> {
        let current = self.current.load(Ordering::Acquire);
        // SAFETY: stored pointers come from Box::into_raw and are freed only in Drop.
        let local = unsafe { &*current };
        if local.pid == std::process::id() {
            return Ok(local);
        }
        let fresh = Box::into_raw(Box::new(Local::new(&self.target)?));
        match self
            .current
            .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            // The parent's Local is leaked on purpose.
            // SAFETY: `fresh` is now owned by `self`.
            Ok(_) => Ok(unsafe { &*fresh }),
            Err(winner) => {
                // SAFETY: `fresh` was never shared; `winner` is a stored pointer.
                drop(unsafe { Box::from_raw(fresh) });
                Ok(unsafe { &*winner })
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
