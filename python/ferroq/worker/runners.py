"""The runner threads: each takes its fair share of the buffer, runs it (a sync processor
or a batch task here, or in its process-pool slot's child), and hands the outcomes to the
completer in one go. ``execute`` is the per-task path: keep calls out of it."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ..context import _current
from ..errors import ProcessCrashed
from ..tracebacks import format_traceback
from .failures import internal_failure
from .hooks import check_batch_results
from .journal import note_return, note_start
from .runs import Batch, Outcome, Run, completed_null, runs_of

if TYPE_CHECKING:
    from .coordinator import Worker
    from .process_pool import ProcessPool, Slot

log = logging.getLogger("ferroq.worker")


class ThreadRunners:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.queue = worker.queue
        #: Runner threads alive (under the worker's ``_ready_cond``), and every one this run.
        self.live = 0
        self.threads: list[threading.Thread] = []
        #: The process pool whose slots the runners use (None: the thread pool).
        self.pool: ProcessPool | None = None

    def reset(self, pool: ProcessPool | None) -> None:
        """A new ``Worker.run``: its process pool, if any."""
        self.pool, self.threads, self.live = pool, [], 0

    def start_threads(self, n: int) -> None:
        """Starts ``n`` more runner threads; with a process pool each gets a slot: the pool's
        first ones (started with it), else a new one whose child its thread starts."""
        started = []
        with self.worker._ready_cond:
            for _ in range(n):
                index = len(self.threads)
                slot, spawn = self.slot(index)
                t = threading.Thread(target=self.runner, args=(slot, spawn), name=f"ferroq-run-{index}", daemon=True)
                self.threads.append(t)
                started.append(t)
                self.live += 1
        for t in started:
            t.start()

    def slot(self, index: int) -> tuple[Slot | None, bool]:
        """Runner ``index``'s slot, and whether its child is still to be started."""
        pool = self.pool
        if pool is None:
            return None, False
        if index < len(pool.slots):
            return pool.slots[index], False
        from .process_pool import Slot

        pool.slots.append(Slot(self.worker, index))
        return pool.slots[-1], True

    def resize(self, n: int) -> None:
        """``n`` runners from now on (autoscale). More start at once; surplus ones leave
        when they next look for work (a run in progress finishes), closing their child."""
        cond = self.worker._ready_cond
        with cond:
            more = n - self.live
            cond.notify_all()
        if more > 0:
            self.start_threads(more)

    def runner(self, slot: Slot | None, spawn: bool = False) -> None:
        """A runner thread's body (``slot``: its child process with ``pool="process"``,
        started here first when ``spawn``)."""
        counted_out = False
        try:
            if slot is not None and spawn:
                slot.spawn()
                slot.await_ready()
            counted_out = self.run_jobs(slot)
        except ProcessCrashed as e:  # a new child could not start: this runner is not added
            log.warning("could not start another child process: %s", e)
        finally:
            if not counted_out:
                with self.worker._ready_cond:
                    self.live -= 1
            if slot is not None:
                slot.close()

    def surplus(self) -> bool:
        """A runner beyond the worker's concurrency (after an autoscale shrink): it leaves,
        counted out here so that no second one leaves for the same shrink."""
        if self.live <= self.worker.concurrency:
            return False
        self.live -= 1
        return True

    def run_jobs(self, slot: Slot | None) -> bool:
        """Runs jobs until closing (False) or surplus (True: counted out already)."""
        w = self.worker
        ready, cond, to_record, stopping = w._ready, w._ready_cond, w._to_record, w._stopping
        breakers, holds = w._breakers, w._holds
        held = breakers.held  # empty unless a group's failures hold it here
        while True:
            with cond:
                while True:
                    if self.surplus():
                        return True
                    if ready or w._closing:
                        break
                    cond.wait()
                if not ready:
                    return False
                share = max(1, min(len(ready) // w.concurrency, 64))
                batch = [ready.popleft() for _ in range(min(share, len(ready)))]
            outcomes: list[Outcome] = []
            flushed = time.monotonic()
            for n, job in enumerate(batch):
                if stopping.is_set():
                    # Stopping: start nothing new; the rest of this share goes back at once.
                    w._release([run for j in batch[n:] for run in runs_of(j)])
                    break
                if held and holds.holds(job):
                    continue
                try:
                    if isinstance(job, Batch):
                        outcomes.extend(self.execute_batch(job) if slot is None else slot.run_batch(job))
                    else:
                        outcome = self.execute(job) if slot is None else slot.run(job)
                        if outcome is not None:
                            outcomes.append(outcome)
                except Exception as exc:  # a bug of ours must not kill the thread (logged below)
                    log.exception("internal error while running %s", job)
                    outcomes.extend(internal_failure(job, exc))
                now = time.monotonic()
                if held and breakers.tripped:  # this run's failure held its group here
                    to_record.put(outcomes)  # the file hears of it at once
                    outcomes, flushed = [], now
                    holds.give_back_tripped()
                if outcomes and now - flushed > 0.005:  # slow tasks: no outcome waits behind the next run
                    to_record.put(outcomes)
                    outcomes, flushed = [], now
            if outcomes:
                to_record.put(outcomes)

    def execute(self, run: Run) -> Outcome | None:
        assert run.task is not None
        w = self.worker
        if run.ctx.stopped and w._skip_stopped(run):
            return None
        timeout = run.task.options.timeout
        if timeout is not None:
            run.deadline = time.monotonic() + timeout
        ctx = run.ctx
        reset = _current.set(ctx)
        journal = w._journal  # note_start and note_return, inlined: once per task
        hooks = w._hooks
        try:
            data = self.queue.serializer.loads(run.payload)
            run.started = time.perf_counter()
            if journal is not None:
                run.slot = journal.started(ctx.id, ctx.token)
            if hooks is None:
                result = run.task.fn(*data["args"], **data["kwargs"])
            else:  # before_run, after_run, tracing
                result = hooks.call(run.task.fn, ctx, data)
        except BaseException as exc:  # noqa: BLE001 - a processor's failure is data, not a crash
            return w._outcomes.settled_failure(run, exc, format_traceback(exc))
        finally:
            if journal is not None:
                journal.returned(run.slot, ctx.id)
            _current.reset(reset)
        if result is None:  # the usual result, without the general path's calls
            return completed_null(run) if run.settle() else None
        return w._outcomes.settled_success(run, result)

    def execute_batch(self, batch: Batch) -> list[Outcome]:
        w = self.worker
        runs = [run for run in batch.runs if not w._skip_stopped(run)]
        if not runs:
            return []
        name = batch.task.name
        made = w._outcomes
        outcomes: list[Outcome | None]
        try:
            items = []
            for run in runs:
                data = self.queue.serializer.loads(run.payload)
                items.append(data["args"][0] if data["args"] else data["kwargs"]["item"])
            journal = w._journal
            hooks = w._hooks
            for run in runs:
                note_start(journal, run)
            try:
                if hooks is None:
                    results = batch.task.batch_fn(items)
                else:  # each run's before_run and after_run
                    results = hooks.call_batch(batch.task.batch_fn, name, [run.ctx for run in runs], items)
            finally:
                for run in runs:
                    note_return(journal, run)
            check_batch_results(name, results, len(runs))
        except BaseException as exc:  # noqa: BLE001 - the whole batch failed
            tb = format_traceback(exc)
            outcomes = [made.settled_failure(run, exc, tb) for run in runs]
        else:
            outcomes = []
            for run, result in zip(runs, results):
                if isinstance(result, BaseException):
                    item_tb = format_traceback(result) if result.__traceback__ else None
                    outcomes.append(made.settled_failure(run, result, item_tb))
                else:
                    outcomes.append(made.settled_success(run, result))
        return [o for o in outcomes if o is not None]
