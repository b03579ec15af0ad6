//! Helpers for the tests of every engine and of the core.

use crate::task::NewTask;

/// A task with the usual options (default group, 3 attempts, `{}` as payload), for tests.
pub(crate) fn task(name: &str, priority: i64) -> NewTask<'_> {
    NewTask {
        name: name.into(),
        resource_group: "default".into(),
        payload: b"{}".into(),
        priority,
        run_at: None,
        max_attempts: 3,
        unique_key: None,
        cache_ttl: None,
    }
}
