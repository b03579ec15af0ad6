//! Input checks shared by every storage engine, run before anything is written: an engine's
//! entry points call these and check nothing of their own.

use crate::clock::Millis;
use crate::error::{Error, Result};
use crate::store::model::CircuitCommand;
use crate::store::operations::Finished;
use crate::task::{NewTask, Outcome, TaskStatus};

/// Lowest accepted priority.
pub const PRIORITY_MIN: i64 = -1000;
/// Highest accepted priority (higher runs first).
pub const PRIORITY_MAX: i64 = 1000;
/// Longest accepted task, queue, group or worker name, in bytes.
pub const NAME_MAX_LEN: usize = 200;
/// Longest accepted unique key, in bytes.
pub const UNIQUE_KEY_MAX_LEN: usize = 1000;
/// Most attempts a task may be given.
pub const MAX_ATTEMPTS_LIMIT: i64 = 10_000;
/// Default payload limit: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;
/// The longest progress message kept (a status line, not a log).
pub const PROGRESS_MESSAGE_MAX: usize = 1024;

/// Checks a task, queue, group or worker name: non-empty, bounded, no control characters.
pub fn name(kind: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{kind} name must not be empty"
        )));
    }
    if value.len() > NAME_MAX_LEN {
        return Err(Error::InvalidArgument(format!(
            "{kind} name is {} bytes long, over the limit of {NAME_MAX_LEN}",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "{kind} name {value:?} contains the control character {c:?}"
        )));
    }
    Ok(())
}

/// Checks a priority against the documented range.
pub fn priority(value: i64) -> Result<()> {
    if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&value) {
        return Err(Error::InvalidArgument(format!(
            "priority {value} is outside the range {PRIORITY_MIN}..={PRIORITY_MAX}"
        )));
    }
    Ok(())
}

/// Checks a max_attempts value.
pub fn max_attempts(value: i64) -> Result<()> {
    if !(1..=MAX_ATTEMPTS_LIMIT).contains(&value) {
        return Err(Error::InvalidArgument(format!(
            "max_attempts {value} is outside the range 1..={MAX_ATTEMPTS_LIMIT}"
        )));
    }
    Ok(())
}

/// Checks a blob against a size limit.
pub fn size(what: &'static str, len: usize, limit: usize) -> Result<()> {
    if len > limit {
        return Err(Error::PayloadTooLarge {
            what,
            size: len,
            limit,
        });
    }
    Ok(())
}

/// Checks everything about new tasks before they are written. Consecutive tasks usually
/// share their name and group (one task's calls): those are checked once per run.
pub fn new_tasks(tasks: &[NewTask], max_payload: usize) -> Result<()> {
    let mut checked: Option<&NewTask> = None;
    for task in tasks {
        if !checked.is_some_and(|c| c.name == task.name && c.resource_group == task.resource_group)
        {
            name("task", &task.name)?;
            name("resource group", &task.resource_group)?;
            checked = Some(task);
        }
        priority(task.priority)?;
        max_attempts(task.max_attempts)?;
        size("payload", task.payload.len(), max_payload)?;
        if let Some(key) = &task.unique_key
            && (key.is_empty() || key.len() > UNIQUE_KEY_MAX_LEN)
        {
            return Err(Error::InvalidArgument(format!(
                "unique_key must be 1..={UNIQUE_KEY_MAX_LEN} bytes long, got {}",
                key.len()
            )));
        }
        if let Some(ttl) = task.cache_ttl
            && (ttl <= 0 || task.unique_key.is_none())
        {
            return Err(Error::InvalidArgument(format!(
                "a cached task needs a cache key (unique_key) and a ttl above 0 ms, got ttl {ttl}"
            )));
        }
    }
    Ok(())
}

/// Checks the results of completed runs against the payload limit.
pub fn results(outcomes: &[Outcome], max_payload: usize) -> Result<()> {
    for outcome in outcomes {
        if let Outcome::Completed { result, .. } = outcome {
            size("result", result.len(), max_payload)?;
        }
    }
    Ok(())
}

/// Checks a progress report: a fraction, and a short message.
pub fn progress(progress: f64, message: Option<&str>) -> Result<()> {
    if !(0.0..=1.0).contains(&progress) {
        return Err(Error::InvalidArgument(format!(
            "progress must be between 0.0 and 1.0, got {progress}"
        )));
    }
    if let Some(m) = message {
        size("progress message", m.len(), PROGRESS_MESSAGE_MAX)?;
    }
    Ok(())
}

/// Checks a queue's and a group's names.
pub fn group(queue: &str, group: &str) -> Result<()> {
    name("queue", queue)?;
    name("resource group", group)
}

/// Checks the groups a claim is restricted to: at least one, each a valid name.
pub fn claim_groups(groups: &[String]) -> Result<()> {
    if groups.is_empty() {
        return Err(Error::InvalidArgument(
            "a claim restricted to groups needs at least one group".into(),
        ));
    }
    for g in groups {
        name("resource group", g)?;
    }
    Ok(())
}

/// Checks an operator's breaker command: an open duration, if given, is positive.
pub fn circuit_command(command: &CircuitCommand) -> Result<()> {
    if let CircuitCommand::Open {
        duration_ms: Some(d),
    } = command
        && *d <= 0
    {
        return Err(Error::InvalidArgument(format!(
            "an open duration must be positive, got {d} ms"
        )));
    }
    Ok(())
}

/// Checks priority aging's settings.
pub fn aging(every_ms: Millis, step: i64, max: i64) -> Result<()> {
    if every_ms <= 0 || step <= 0 {
        return Err(Error::InvalidArgument(
            "priority aging needs a positive interval and step".into(),
        ));
    }
    priority(max)
}

/// Checks what a bulk operation selects: finished tasks of one status.
pub fn finished(which: &Finished) -> Result<()> {
    if !matches!(
        which.status,
        TaskStatus::Completed | TaskStatus::Dead | TaskStatus::Cancelled
    ) {
        return Err(Error::InvalidArgument(format!(
            "only finished tasks (completed, dead, cancelled) can be selected here, not {}",
            which.status
        )));
    }
    Ok(())
}

/// Checks what a bulk requeue selects: dead or cancelled tasks.
pub fn requeue(which: &Finished) -> Result<()> {
    if which.status == TaskStatus::Completed {
        return Err(Error::InvalidArgument(
            "only dead or cancelled tasks can be requeued".into(),
        ));
    }
    finished(which)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(name("task", "resize").is_ok());
        assert!(name("task", "").is_err());
        assert!(name("task", &"x".repeat(NAME_MAX_LEN + 1)).is_err());
        assert!(name("task", "a\nb").is_err());
        assert!(name("task", "a\u{7f}b").is_err());
        assert!(name("task", "é-ok.名前").is_ok());
    }

    #[test]
    fn priority_range_is_inclusive() {
        assert!(priority(PRIORITY_MIN).is_ok());
        assert!(priority(PRIORITY_MAX).is_ok());
        assert!(priority(PRIORITY_MAX + 1).is_err());
        assert!(priority(PRIORITY_MIN - 1).is_err());
    }

    #[test]
    fn every_task_of_a_batch_is_checked_whatever_came_before() {
        let good = crate::store::testing::task("t", 0);
        assert!(new_tasks(&[good.clone(), good.clone()], 10).is_ok());
        let bad = [
            NewTask {
                name: "a\nb".into(),
                ..good.clone()
            },
            NewTask {
                resource_group: "".into(),
                ..good.clone()
            },
            NewTask {
                priority: PRIORITY_MAX + 1,
                ..good.clone()
            },
            NewTask {
                max_attempts: 0,
                ..good.clone()
            },
            NewTask {
                payload: vec![b'x'; 11].into(),
                ..good.clone()
            },
            NewTask {
                unique_key: Some("".into()),
                ..good.clone()
            },
            NewTask {
                cache_ttl: Some(1000),
                ..good.clone()
            },
            NewTask {
                unique_key: Some("k".into()),
                cache_ttl: Some(0),
                ..good.clone()
            },
        ];
        for task in bad {
            let batch = [good.clone(), good.clone(), task, good.clone()];
            assert!(new_tasks(&batch, 10).is_err(), "{:?}", batch[2]);
        }
    }

    #[test]
    fn entry_point_checks() {
        assert!(progress(0.5, Some("half")).is_ok());
        assert!(progress(1.5, None).is_err());
        assert!(progress(f64::NAN, None).is_err());
        assert!(progress(0.5, Some(&"x".repeat(PROGRESS_MESSAGE_MAX + 1))).is_err());
        assert!(group("q", "").is_err());
        assert!(claim_groups(&[]).is_err());
        assert!(claim_groups(&["a".into(), "b\n".into()]).is_err());
        let open = |d| CircuitCommand::Open { duration_ms: d };
        assert!(circuit_command(&open(None)).is_ok());
        assert!(circuit_command(&open(Some(0))).is_err());
        assert!(aging(1000, 1, PRIORITY_MAX).is_ok());
        assert!(aging(0, 1, 0).is_err());
        assert!(aging(1000, 1, PRIORITY_MAX + 1).is_err());
        let which = |status| Finished {
            status,
            finished_before: None,
            group: None,
            name: None,
        };
        assert!(finished(&which(TaskStatus::Completed)).is_ok());
        assert!(finished(&which(TaskStatus::Running)).is_err());
        assert!(requeue(&which(TaskStatus::Dead)).is_ok());
        assert!(requeue(&which(TaskStatus::Completed)).is_err());
        assert!(requeue(&which(TaskStatus::Pending)).is_err());
    }

    #[test]
    fn payload_limit() {
        assert!(size("payload", 10, 10).is_ok());
        assert!(matches!(
            size("payload", 11, 10),
            Err(Error::PayloadTooLarge { size: 11, .. })
        ));
    }
}
