//! Finished tasks carried from one store to another (`ferroq migrate --history`): what every
//! engine checks and keeps before it writes them, so the engines only insert rows.

use crate::error::{Error, Result};
use crate::task::{TaskRecord, TaskStatus, Transition};
use crate::validate;

/// A finished task as another store holds it: its record (the id and queue are the source's,
/// not kept) and its transitions as `Store::history` returns them.
#[derive(Debug, Clone)]
pub struct FinishedTask {
    pub record: TaskRecord,
    pub history: Vec<Transition>,
}

/// Refuses a batch that holds anything but sound finished tasks, before anything is written.
pub fn validate(tasks: &[FinishedTask], max_payload: usize) -> Result<()> {
    for t in tasks {
        let r = &t.record;
        if !matches!(
            r.status,
            TaskStatus::Completed | TaskStatus::Dead | TaskStatus::Cancelled
        ) {
            return Err(Error::InvalidArgument(format!(
                "task {} is {}: only finished tasks (completed, dead, cancelled) are imported",
                r.id,
                r.status.as_str()
            )));
        }
        if let Some(c) = &r.corrupt {
            return Err(Error::InvalidArgument(format!(
                "task {}: its {} column holds a damaged value ({})",
                r.id, c.column, c.problem
            )));
        }
        validate::name("task", &r.name)?;
        validate::name("resource group", &r.resource_group)?;
        validate::size("payload", r.payload.len(), max_payload)?;
        if let Some(result) = &r.result {
            validate::size("result", result.len(), max_payload)?;
        }
    }
    Ok(())
}

/// The transitions an engine stores for `task`: its history less what every engine derives
/// from the task's row when it reads the history back (`admin::history` in each engine): the
/// enqueue (from `created_at`) and, for a completed task, the claim and completion of its
/// last run (from `started_at` and `finished_at`). Stored as well, those would show twice.
pub fn stored_transitions(task: &FinishedTask) -> &[Transition] {
    let r = &task.record;
    let mut h = task.history.as_slice();
    if let Some((first, rest)) = h.split_first()
        && first.from.is_none()
        && first.at == r.created_at
    {
        h = rest;
    }
    if r.status == TaskStatus::Completed {
        let derived = |t: &Transition, from, to, at: Option<i64>| {
            t.from == Some(from) && t.to == to && Some(t.at) == at
        };
        if let Some((last, rest)) = h.split_last()
            && derived(
                last,
                TaskStatus::Running,
                TaskStatus::Completed,
                r.finished_at,
            )
        {
            h = rest;
        }
        if let Some((last, rest)) = h.split_last()
            && derived(last, TaskStatus::Pending, TaskStatus::Running, r.started_at)
        {
            h = rest;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskStatus::*;

    fn step(from: Option<TaskStatus>, to: TaskStatus, at: i64) -> Transition {
        Transition {
            from,
            to,
            at,
            worker: Some("w".into()),
            error: None,
        }
    }

    fn finished(status: TaskStatus, history: Vec<Transition>) -> FinishedTask {
        FinishedTask {
            record: TaskRecord {
                id: 7,
                queue: "q".into(),
                name: "t".into(),
                status,
                priority: 0,
                resource_group: "default".into(),
                payload: Vec::new(),
                attempts: 2,
                max_attempts: 3,
                run_at: 1,
                unique_key: None,
                progress: None,
                progress_message: None,
                lease_owner: Some("w".into()),
                lease_expires_at: None,
                last_error: None,
                result: None,
                created_at: 1,
                updated_at: 9,
                started_at: Some(5),
                finished_at: Some(9),
                corrupt: None,
            },
            history,
        }
    }

    #[test]
    fn a_completed_task_keeps_its_earlier_runs_only() {
        let retry = [
            step(Some(Pending), Running, 2),
            step(Some(Running), Pending, 3),
        ];
        let mut all = vec![step(None, Pending, 1)];
        all.extend(retry.iter().cloned());
        all.extend([
            step(Some(Pending), Running, 5),
            step(Some(Running), Completed, 9),
        ]);
        assert_eq!(stored_transitions(&finished(Completed, all)), retry);
    }

    #[test]
    fn a_dead_task_keeps_every_run() {
        let runs = vec![
            step(None, Pending, 1),
            step(Some(Pending), Running, 5),
            step(Some(Running), Dead, 9),
        ];
        assert_eq!(
            stored_transitions(&finished(Dead, runs.clone())),
            &runs[1..]
        );
    }

    #[test]
    fn only_finished_sound_tasks_are_accepted() {
        assert!(validate(&[finished(Cancelled, vec![])], 100).is_ok());
        let running = finished(Running, vec![]);
        let err = validate(&[running], 100).unwrap_err().to_string();
        assert!(err.contains("only finished tasks"), "{err}");
        let mut big = finished(Completed, vec![]);
        big.record.result = Some(vec![0; 101]);
        assert!(matches!(
            validate(&[big], 100),
            Err(Error::PayloadTooLarge { what: "result", .. })
        ));
    }
}
