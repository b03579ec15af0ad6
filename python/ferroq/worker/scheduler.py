"""The scheduler: enqueues the queue's periodic tasks (``Queue.schedule``) at their ticks.

Every worker runs one, driven by the maintenance thread. Exactly once per tick however
many run: the store enqueues a tick only if the schedule's ``last_tick`` in the file is
older, and raises it in the same transaction (``Store.enqueue_tick``), so a racing worker
sees the tick taken, also after its task finished or was pruned. The task also carries
the tick in its unique key."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..periodic import Schedule
    from ..queue import Queue

log = logging.getLogger("ferroq.worker")


class Scheduler:
    def __init__(self, queue: Queue, clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        #: Epoch seconds now; injectable for tests.
        self.clock = clock
        self._started: int | None = None
        #: Per schedule: the next tick (ms) it waits for.
        self._next: dict[str, int] = {}

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def start(self) -> None:
        """Declares the schedules in the file; the first tick each waits for comes after its
        last enqueued tick (or, never run, after it was first declared)."""
        now = self._now()
        store = self.queue._engine
        for s in self.queue._schedules.values():
            row = store.declare_schedule(self.queue.name, s.name, s.task.name, s.cron.expr, s.cron.tz, s.missed, now)
            after = max(row["last_tick"] if row["last_tick"] is not None else row["declared_at"], row["declared_at"])
            self._next[s.name] = s.cron.next_after(after)
        self._started = now

    def poll(self) -> list[int]:
        """Enqueues each schedule's newest due tick (missed ones collapse into it); returns
        the ids of the tasks created."""
        if not self.queue._schedules:
            return []
        if self._started is None:
            self.start()
        now = self._now()
        created = []
        for s in self.queue._schedules.values():
            if now < self._next[s.name]:
                continue
            tick = s.cron.latest(now)
            task_id = self._enqueue(s, tick)
            if task_id is not None:
                created.append(task_id)
            self._next[s.name] = s.cron.next_after(tick)
        return created

    def _enqueue(self, s: Schedule, tick: int) -> int | None:
        assert self._started is not None
        if s.missed == "skip" and tick < self._started:
            log.info("schedule %r: skipping tick %d missed while no worker ran", s.name, tick)
            return None
        call = s.task.using(unique_key=s.unique_key(tick)).call(*s.args, **s.kwargs)
        done = self.queue._engine.enqueue_tick(self.queue.name, s.name, tick, call.core_task())
        if done is None or not done[1]:
            return None
        self.queue._notify()
        return int(done[0])
