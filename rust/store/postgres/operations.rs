//! What operators and dedicated workers need beyond the scheduler (`store::Operations`):
//! schedules, listings, bulk purge and requeue, restricted claims.

use super::{PgStore, admin, enqueue, events, import, listing, schedules};
use crate::clock::Millis;
use crate::error::Result;
use crate::metrics::Counter;
use crate::store::import::FinishedTask;
use crate::store::operations::{
    CancelCursor, CancelStep, Cursor, Finished, Operations, Page, PendingTasks, Schedule, Step,
    TaskFilter,
};
use crate::task::{ClaimedTask, Enqueued, NewTask, TaskId, TaskRecord};
use crate::validate;

impl Operations for PgStore {
    fn import_finished(&self, queue: &str, tasks: &[FinishedTask]) -> Result<Vec<TaskId>> {
        validate::name("queue", queue)?;
        crate::store::import::validate(tasks, self.options.max_payload)?;
        self.write(|db, _| import::insert_all(db, queue, tasks))
    }

    fn clear_cache(&self, queue: &str, name: &str, key: Option<&str>) -> Result<u64> {
        validate::name("queue", queue)?;
        self.write(|db, _| enqueue::clear_cache(db, queue, name, key))
    }

    fn declare_schedule(&self, queue: &str, schedule: &Schedule, now: Millis) -> Result<Schedule> {
        validate::name("queue", queue)?;
        validate::name("schedule", &schedule.name)?;
        validate::name("task", &schedule.task)?;
        self.write(|db, _| schedules::declare(db, queue, schedule, now))
    }

    fn enqueue_tick(
        &self,
        queue: &str,
        name: &str,
        tick: Millis,
        task: &NewTask,
    ) -> Result<Option<Enqueued>> {
        validate::new_tasks(std::slice::from_ref(task), self.options.max_payload)?;
        let channel = self.channel();
        let task_events = self.options.task_events;
        let done = self.write(|db, now| {
            let tick = (name, tick);
            schedules::enqueue_tick(db, queue, tick, task, (task_events, &channel), now)
        })?;
        if let (Some(e), Some(mut m)) = (done, self.metrics()) {
            m.count_enqueued(queue, std::slice::from_ref(task), &[e]);
        }
        Ok(done)
    }

    fn schedules(&self, queue: &str) -> Result<Vec<Schedule>> {
        self.read(|db, _| schedules::list(db, queue))
    }

    fn list(&self, queue: &str, filter: &TaskFilter, page: Page) -> Result<Vec<TaskRecord>> {
        if page.limit == 0 {
            return Ok(Vec::new());
        }
        self.read(|db, _| listing::list(db, queue, filter, page))
    }

    fn count_finished(&self, queue: &str, which: &Finished) -> Result<u64> {
        validate::finished(which)?;
        self.read(|db, _| listing::count_finished(db, queue, which))
    }

    fn purge_batch(
        &self,
        queue: &str,
        which: &Finished,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Step> {
        validate::finished(which)?;
        self.write(|db, _| listing::purge_batch(db, queue, which, after, limit.max(1)))
    }

    fn requeue_batch(
        &self,
        queue: &str,
        which: &Finished,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Step> {
        validate::requeue(which)?;
        let channel = self.channel();
        self.write(|db, now| {
            let step = listing::requeue_batch(db, queue, which, after, limit.max(1), now)?;
            if step.done > 0 {
                events::notify(db, &channel, queue)?;
            }
            Ok(step)
        })
    }

    fn count_pending(&self, queue: &str, which: &PendingTasks) -> Result<u64> {
        self.read(|db, _| listing::count_pending(db, queue, which))
    }

    fn cancel_batch(
        &self,
        queue: &str,
        which: &PendingTasks,
        at: Option<CancelCursor>,
        limit: usize,
    ) -> Result<CancelStep> {
        let channel = self.channel();
        let (step, groups) = self.write(|db, now| {
            let done = listing::cancel_batch(db, queue, which, at, limit.max(1), now)?;
            if done.0.done > 0 {
                events::notify(db, &channel, queue)?;
            }
            Ok(done)
        })?;
        if let Some(mut m) = self.metrics() {
            for group in &groups {
                m.count(queue, group, Counter::Cancelled, 1);
            }
        }
        Ok(step)
    }

    fn claim_in_groups(
        &self,
        queue: &str,
        groups: &[String],
        worker: &str,
        limit: usize,
        lease_ms: Millis,
    ) -> Result<Vec<ClaimedTask>> {
        validate::claim_groups(groups)?;
        self.lease_ready(queue, Some(groups), worker, limit, lease_ms)
    }

    fn queue_names(&self) -> Result<Vec<String>> {
        self.read(|db, _| admin::queue_names(db))
    }

    fn task_names_like(&self, queue: &str, name: &str) -> Result<Vec<String>> {
        self.read(|db, _| listing::task_names_like(db, queue, name))
    }
}
