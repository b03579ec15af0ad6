"""Claiming: the worker's main thread claims tasks in batches into the local buffer (an
adaptive prefetch of about 50 ms of work), forms batches for batch tasks, hands async runs
to the event loop, gives back tasks it has no processor for, and sleeps until the next
commit, due task or held group."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .._core import ClaimedTask
from ..context import TaskContext
from ..errors import StorageError
from ..task import BatchTask
from .failures import FATAL_STORAGE
from .runs import Batch, Job, Run

if TYPE_CHECKING:
    from .._core import Store
    from .coordinator import Worker

log = logging.getLogger("ferroq.worker")

#: The adaptive prefetch holds about 50 ms of work, at most this many tasks.
PREFETCH_MAX = 10_000


class ClaimLoop:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def run(self, until_idle: bool, until_empty: bool) -> None:
        w = self.worker
        store, name = w.queue._engine, w.queue.name
        lease_ms = int(w.lease * 1000)
        while not w._stopping.is_set():
            target = w.concurrency + self.prefetch_now()
            # Claim when a quarter of the window is free, so claims come in batches.
            batch_floor = max(1, target // 4)
            # Any commit after this point (an enqueue here or in another process, a flush
            # of outcomes, a stop request) ends the wait below at once.
            token = store.change_token()
            free = target - len(w._inflight)
            wait = w.poll_interval  # woken earlier by any flush or enqueue in this process
            # A group just held by failures here: claim nothing until the completer has written
            # them (its commit ends the wait), or its given-back tasks would come straight back.
            if w._breakers.held and w._breakers.awaiting_file():
                pass
            elif free >= batch_floor or (free > 0 and not w._ready):
                try:
                    rows = self.claim(store, name, free, lease_ms)
                except FATAL_STORAGE:
                    raise
                except StorageError as e:
                    log.warning("claim failed, retrying: %s", e)
                    w._stopping.wait(1.0)
                    continue
                if rows:
                    self.start(rows)
                    continue
                # Idle only if nothing committed since the claim: a run that finished
                # meanwhile may have put a retry back in the queue.
                if (
                    not w._inflight
                    and (until_idle or (until_empty and self.queue_empty()))
                    and not store.wait_for_change(token, 0)
                ):
                    return
                wait = self.idle_wait()
            wait = min(wait, self.dispatch_due_batches())
            store.wait_for_change(token, wait)

    def claim(self, store: Store, name: str, free: int, lease_ms: int) -> list[ClaimedTask]:
        """Up to ``free`` tasks under fresh leases (of the worker's groups, if it has any)."""
        w = self.worker
        if w.groups is None:
            return store.claim(name, w.id, free, lease_ms)
        return store.claim_in_groups(name, list(w.groups), w.id, free, lease_ms)

    def prefetch_now(self) -> int:
        w = self.worker
        if w.prefetch is not None:
            return w.prefetch
        # Room for a full batch of every batch task, so batches can fill.
        floor = max([w.concurrency] + [t.max_size for t in w.queue._tasks.values() if isinstance(t, BatchTask)])
        return min(PREFETCH_MAX, max(floor, int(w._completer.rate * 0.05)))

    def dispatch_due_batches(self) -> float:
        """Hands over batches whose wait is up; returns seconds until the next one is due."""
        w = self.worker
        now = time.monotonic()
        forming = w._forming
        due = [key for key, b in forming.items() if b.due <= now]
        if due:
            with w._ready_cond:
                for key in due:
                    w._ready.append(forming.pop(key))
                w._ready_cond.notify(len(due))
        return min((b.due - now for b in forming.values()), default=w.poll_interval)

    def queue_empty(self) -> bool:
        w = self.worker
        if w.groups is not None:  # only the groups this worker serves
            states = [w.queue.group(g).state() for g in w.groups]
            return all(st.pending == 0 and st.running == 0 for st in states)
        counts = w.queue.counts()
        return counts["pending"] == 0 and counts["running"] == 0

    def idle_wait(self) -> float:
        """How long to sleep when nothing was claimed: until the next delayed task is due or
        a held group (rate limit, open breaker, Retry-After) may start again, at most
        ``poll_interval``. Any commit to the file ends the wait sooner."""
        w = self.worker
        store, name = w.queue._engine, w.queue.name
        try:
            times = [t for t in (store.next_run_at(name), store.next_unblock_at(name)) if t is not None]
        except StorageError:
            return w.poll_interval
        if not times:
            return w.poll_interval
        return min(w.poll_interval, max(0.001, (min(times) - store.now_ms()) / 1000))

    def start(self, rows: list[ClaimedTask]) -> None:
        """Claimed rows become runs: into the buffer, a forming batch, or the event loop."""
        w = self.worker
        tasks = w.queue._tasks
        if w.queue._resolve is not None:
            self.resolve({row.name for row in rows if row.name not in tasks})
        ready: list[Job] = []
        unknown: list[tuple[int, int, str]] = []
        coroutines: list[Run] = []
        loop = w._async.loop
        with w._lock:
            w.stats.claimed += len(rows)
            inflight, forming = w._inflight, w._forming
            for row in rows:
                name = row.name
                task = tasks.get(name)
                if task is None:
                    unknown.append((row.id, row.token, name))
                    continue
                group = row.group
                run = Run(
                    TaskContext(row.id, name, group, row.attempt, row.max_attempts, row.created_at_ms, row.token, w),
                    task,
                    row.payload,
                )
                inflight[row.id] = run
                if isinstance(task, BatchTask):
                    key = (name, group)
                    batch = forming.get(key)
                    if batch is None:
                        forming[key] = Batch(task, run)
                    else:
                        batch.runs.append(run)
                        if len(batch.runs) >= task.max_size:
                            ready.append(forming.pop(key))
                elif task.is_async and loop is not None:  # (a process pool's children run async too)
                    coroutines.append(run)
                else:
                    ready.append(run)
        if unknown:
            self.defer_unknown(unknown)
        if coroutines and loop is not None:
            w._async.submit(coroutines)
        if ready:
            with w._ready_cond:
                w._ready.extend(ready)
                w._ready_cond.notify(len(ready))

    def resolve(self, names: set[str]) -> None:
        """Asks the queue's resolver for processors of these names (outside the worker's
        lock: it may import a module). One it cannot find stays unknown and is given back."""
        resolve = self.worker.queue._resolve
        assert resolve is not None
        for name in names:
            try:
                resolve(name)
            except Exception:  # a user module that fails to import must not stop the claim loop
                log.exception("could not find a processor for task %r", name)

    def defer_unknown(self, claims: list[tuple[int, int, str]]) -> None:
        """Gives back claimed ``(id, token, name)`` tasks no processor here can run. If that
        fails, their leases (not renewed: they are not in flight) expire and the rescuer
        gives them back, their attempts too (the run journal never saw them start)."""
        w = self.worker
        try:
            deferred, dead = w._unknown.give_back(w.queue._engine, w.id, claims)
        except FATAL_STORAGE:
            raise
        except StorageError as e:
            log.warning("could not give back %d task(s) without a processor here: %s", len(claims), e)
            return
        w._count("deferred", deferred)
        w._count("dead", dead)
