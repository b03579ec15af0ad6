//! Wake-ups instead of polling: a waiter returns as soon as anything commits to the file.
//!
//! Commits in this process bump a counter and signal a condition variable (instant wake).
//! Commits by other processes show as a change of `PRAGMA data_version` on our own
//! connection, checked every millisecond while waiting: it reads the WAL index in shared
//! memory, so the check is cheap.

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where the file stood when a caller last looked: (local commits, data_version).
pub type ChangeToken = (u64, i64);

/// How often a waiter looks for commits by other processes.
const CROSS_PROCESS_CHECK: Duration = Duration::from_millis(1);

/// Counts this process's commits and wakes waiters.
#[derive(Default)]
pub struct Changes {
    count: Mutex<u64>,
    changed: Condvar,
}

impl Changes {
    /// Records a commit (or any event a waiter should see) and wakes every waiter.
    pub fn bump(&self) {
        *self.count.lock() += 1;
        self.changed.notify_all();
    }

    /// This process's commit count.
    pub fn count(&self) -> u64 {
        *self.count.lock()
    }

    /// Waits until the local count moves past `seen`, `data_version()` differs from
    /// `version`, or `timeout` passes. Returns whether something changed.
    pub fn wait(
        &self,
        (seen, version): ChangeToken,
        timeout: Duration,
        mut data_version: impl FnMut() -> crate::Result<i64>,
    ) -> crate::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if data_version()? != version {
                return Ok(true);
            }
            let mut count = self.count.lock();
            if *count != seen {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let pause = CROSS_PROCESS_CHECK.min(deadline - now);
            self.changed.wait_for(&mut count, pause);
            if *count != seen {
                return Ok(true);
            }
        }
    }
}
