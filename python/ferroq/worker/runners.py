"""The runner threads: each takes its fair share of the buffer, runs it (a sync processor
or a batch task here, or in its process-pool slot's child), and hands the outcomes to the
completer in one go. ``execute`` is the per-task path: keep calls out of it."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..context import _current
from ..tracebacks import format_traceback
from .failures import internal_failure
from .hooks import check_batch_results
from .journal import note_return, note_start
from .runs import Batch, Outcome, Run, completed_null, runs_of

if TYPE_CHECKING:
    from .coordinator import Worker
    from .process_pool import Slot

log = logging.getLogger("ferroq.worker")


class ThreadRunners:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.queue = worker.queue

    def runner(self, slot: Slot | None) -> None:
        """A runner thread's body (``slot``: its child process with ``pool="process"``)."""
        try:
            self.run_jobs(slot)
        finally:
            if slot is not None:
                slot.close()

    def run_jobs(self, slot: Slot | None) -> None:
        w = self.worker
        ready, cond, to_record, stopping = w._ready, w._ready_cond, w._to_record, w._stopping
        breakers, holds = w._breakers, w._holds
        held = breakers.held  # empty unless a group's failures hold it here
        while True:
            with cond:
                while not ready and not w._closing:
                    cond.wait()
                if not ready:
                    return
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
