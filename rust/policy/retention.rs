//! How long finished tasks are kept.

use crate::clock::Millis;

/// Limits for one kind of finished task; a task is pruned when it breaks either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    /// Keep for at most this long after finishing.
    pub max_age_ms: Option<Millis>,
    /// Keep at most this many, the most recently finished.
    pub max_count: Option<u64>,
}

impl Keep {
    /// True when nothing is ever pruned.
    pub fn keeps_all(&self) -> bool {
        self.max_age_ms.is_none() && self.max_count.is_none()
    }
}

/// Retention of finished tasks, like BullMQ's removeOnComplete / removeOnFail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Completed and cancelled tasks.
    pub completed: Keep,
    /// Dead tasks.
    pub dead: Keep,
}
