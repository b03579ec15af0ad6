"""The maintenance thread: renews the leases of runs in flight (every lease/3), fails sync
runs past their timeout, registers the worker (for health checks) and flushes its metrics,
rescues expired leases of dead workers, ages priorities, applies retention, prunes
observability data and enqueues periodic tasks at their ticks."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from ..alerts import EVALUATE_EVERY as ALERTS_EVERY
from ..errors import StorageError
from .failures import is_fatal
from .scheduler import Scheduler

if TYPE_CHECKING:
    from ..context import TaskContext
    from .coordinator import Worker

log = logging.getLogger("ferroq.worker")

#: How often a worker renews its registration, and flushes its metrics to the file.
WORKER_SEEN_INTERVAL = 2.0
METRICS_INTERVAL = 10.0
#: A profiling worker's flush interval (``ferroq profile`` reads it live).
PROFILE_INTERVAL = 1.0


class Maintenance:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.scheduler = Scheduler(worker.queue)

    def heartbeat(self, contexts: list[TaskContext]) -> None:
        """Renews these runs' leases; a run whose lease is lost is told to stop."""
        if not contexts:
            return
        w = self.worker
        alive = w.queue._engine.heartbeat([(c.id, c.token) for c in contexts], int(w.lease * 1000))
        for ctx, held in zip(contexts, alive):
            if not held:
                ctx.stopped = True

    def run(self) -> None:
        w = self.worker
        queue, store = w.queue, w.queue._engine
        tick = min(0.1, w.lease / 6)
        now = time.monotonic()
        next_heartbeat, next_rescue = now + w.lease / 3, now
        next_prune = next_aging = next_seen = next_metrics = next_observe_prune = next_alerts = now
        while True:
            now = time.monotonic()
            try:
                if now >= next_seen:
                    self.register()
                    next_seen = now + WORKER_SEEN_INTERVAL
                if now >= next_metrics:
                    if w._profiler is not None:  # profiling: every second, for live readers
                        w._profiler.push(queue)
                    store.flush_metrics()
                    next_metrics = now + (METRICS_INTERVAL if w._profiler is None else PROFILE_INTERVAL)
                if now >= next_observe_prune and not w._stopping.is_set():
                    queue.observability.prune(queue)
                    next_observe_prune = now + 60.0
                if now >= next_heartbeat:
                    with w._lock:
                        contexts = [r.ctx for r in w._inflight.values()]
                    self.heartbeat(contexts)
                    next_heartbeat = now + w.lease / 3
                self.expire_timeouts(now)
                if now >= next_rescue and not w._stopping.is_set():
                    rescued = store.rescue(queue.name)
                    if rescued:
                        w._count("rescued", len(rescued))
                        log.warning(
                            "rescued %d task(s) whose worker stopped heartbeating: %s", len(rescued), rescued[:10]
                        )
                        queue._notify()
                    next_rescue = now + w.rescue_interval
                if not w._stopping.is_set():
                    self.scheduler.poll()
                if w._autoscaler is not None and not w._stopping.is_set():
                    w._autoscaler.tick(now)
                if queue._alerts and now >= next_alerts and not w._stopping.is_set():
                    next_alerts = now + ALERTS_EVERY
                    self.check_alerts()
                aging = queue.priority_aging
                if aging is not None and now >= next_aging and not w._stopping.is_set():
                    store.age_priorities(queue.name, max(1, int(aging.every * 1000)), aging.step, aging.max_priority)
                    # A few passes per interval, so no task waits much more than `every`.
                    next_aging = now + aging.every / 4
                retention = queue.retention
                if retention is not None and now >= next_prune and not w._stopping.is_set():
                    pruned = queue.prune()
                    if pruned:
                        log.info("pruned %d finished task(s)", pruned)
                    next_prune = now + retention.interval
            except StorageError as e:
                log.warning("maintenance step failed, will retry: %s", e)
            if w._maintenance_done.wait(tick):
                return

    def check_alerts(self) -> None:
        """One alert evaluation, if this worker gets the turn (a failing rule is logged by
        ``check_alerts``; anything else must not stop the maintenance thread)."""
        try:
            self.worker.queue.check_alerts()
        except StorageError:
            raise
        except Exception:
            log.exception("alert evaluation failed")

    def register(self) -> None:
        """Registers this worker in the file (or renews it), for health checks."""
        w = self.worker
        w.queue._engine.worker_seen(w.id, w.queue.name, socket.gethostname(), os.getpid(), w.concurrency, w.pool)

    def unregister(self) -> None:
        w = self.worker
        try:
            store = w.queue._engine
            if w._profiler is not None:
                w._profiler.push(w.queue)
            store.flush_metrics()
            store.worker_stopped(w.id)
        except StorageError as e:
            log.warning("could not record worker %s stopping: %s", w.id, e)

    def expire_timeouts(self, now: float) -> None:
        """Fails sync runs past their timeout (their threads keep running: a thread cannot
        be killed; their late results are discarded)."""
        w = self.worker
        with w._lock:
            late = [
                r
                for r in w._inflight.values()
                if r.deadline is not None and now >= r.deadline and r.task is not None and not r.task.is_async
            ]
        for run in late:
            if run.settle():
                run.ctx.stopped = True
                timeout = run.task.options.timeout if run.task else None
                w._count("timed_out")
                exc = TimeoutError(
                    f"task {run.ctx.name!r} exceeded its timeout of {timeout}s "
                    "(its thread keeps running; its late result will be discarded)"
                )
                w._to_record.put([w._outcomes.failure(run, exc, None, fatal=is_fatal(run, exc))])
        if w._breakers.tripped:
            w._holds.give_back_tripped()
