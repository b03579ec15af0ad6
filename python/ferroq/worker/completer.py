"""The completer thread: commits outcomes in batches, whatever has arrived while the last
batch was being written going into the next transaction, each row still fenced by its
lease token. ``flush`` is on the per-task path (once per batch): keep calls out of it."""

from __future__ import annotations

import logging
import queue as queue_module
import time
from typing import TYPE_CHECKING, Any

from .._core import Outcomes
from ..context import TaskContext
from ..errors import FerroqError, StorageError
from .failures import FATAL_STORAGE, describe
from .journal import forget

if TYPE_CHECKING:
    from .coordinator import Worker
    from .runs import Outcome

log = logging.getLogger("ferroq.worker")


class Completer:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        #: Completions per second, smoothed over flushes (the adaptive prefetch follows it).
        self.rate = 0.0

    def run(self) -> None:
        outcomes = self.worker._to_record
        closing = False
        last = time.monotonic()
        while not closing:
            first = outcomes.get()
            if first is None:
                break
            batch = list(first)
            while len(batch) < 2000:
                try:
                    more = outcomes.get_nowait()
                except queue_module.Empty:
                    break
                if more is None:
                    closing = True
                    break
                batch.extend(more)
            self.flush(batch)
            now = time.monotonic()
            # Completions per second, smoothed over flushes; an idle gap decays it.
            self.rate = 0.8 * self.rate + 0.2 * (len(batch) / max(now - last, 1e-4))
            last = now

    def flush(self, batch: list[Outcome]) -> None:
        w = self.worker
        rows = Outcomes()
        completed, failed = rows.completed, rows.failed
        for run, data, error, delay, _, toward_breaker, hold in batch:
            ctx = run.ctx
            if error is None:
                completed(ctx.id, ctx.token, data, run.run_us)
            else:
                failed(ctx.id, ctx.token, error, delay, toward_breaker, hold, run.run_us)
        while True:
            try:
                answers = self.commit(rows)
                break
            except FATAL_STORAGE as e:
                log.error("cannot record %d outcome(s), the database is unusable: %s", len(rows), e)
                answers = [None] * len(rows)
                break
            except FerroqError as e:
                if not isinstance(e, StorageError):
                    # A bug, not the database: never let the completer die over it. The
                    # tasks keep their leases until expiry and then run again.
                    log.exception("cannot record %d outcome(s)", len(rows))
                    answers = [None] * len(rows)
                    break
                # Leases stay renewed while we retry (the runs are still in flight); if this
                # process dies first, the tasks run again: at-least-once, never lost.
                log.warning("recording %d outcome(s) failed, retrying: %s", len(rows), e)
                if w._hard_stop.wait(0.5):
                    answers = [None] * len(rows)
                    break
        counts = {"completed": 0, "retried": 0, "dead": 0, "lost": 0}
        all_completed = answers.count("completed") == len(answers)  # the usual batch: no per-run logging
        if all_completed:
            counts["completed"] = len(answers)
        # A retry storm fails every task: the (usually disabled) INFO line's arguments are
        # built only if it will be written.
        log_retries = log.isEnabledFor(logging.INFO)
        for (run, _data, _error, delay, exc, _counts, _hold), status in zip(batch, () if all_completed else answers):
            ctx = run.ctx
            if status is None:
                counts["lost"] += 1
                log.warning(
                    "task %d (%s) finished after its lease was lost; outcome discarded",
                    ctx.id,
                    ctx.name,
                    extra=self.log_extra(ctx, "lost"),
                )
            elif status == "completed":
                counts["completed"] += 1
            elif status == "dead":
                counts["dead"] += 1
                log.warning(
                    "task %d (%s) is dead after attempt %d: %s",
                    ctx.id,
                    ctx.name,
                    ctx.attempt,
                    describe(exc),
                    extra=self.log_extra(ctx, "dead"),
                )
            else:
                counts["retried"] += 1
                if log_retries:
                    log.info(
                        "task %d (%s) failed attempt %d, retrying in %.3fs: %s",
                        ctx.id,
                        ctx.name,
                        ctx.attempt,
                        (delay or 0) / 1000,
                        describe(exc),
                        extra=self.log_extra(ctx, "retried"),
                    )
        with w._lock:
            stats = w.stats
            for counter, n in counts.items():
                setattr(stats, counter, getattr(stats, counter) + n)
            inflight = w._inflight
            for run, *_ in batch:
                # A timed-out run's thread may still be busy; its slot frees when it returns.
                if inflight.get(run.ctx.id) is run:
                    del inflight[run.ctx.id]
        forget(w._journal, [run for run, *_ in batch])
        counted = (
            () if all_completed else [run.ctx.resource_group for run, _d, _e, _dl, _x, counts_, _h in batch if counts_]
        )
        if counted:
            w._holds.learn(counted)
        w.queue._notify()

    def commit(self, rows: Outcomes) -> list[str | None]:
        """Records the outcomes in one transaction; per outcome its status (None: lost)."""
        return self.worker.queue._engine.finish_many(rows)

    def log_extra(self, ctx: TaskContext, outcome: str) -> dict[str, Any]:
        """Structured fields on task log records (for JSON log formatters)."""
        w = self.worker
        return {
            "ferroq_task_id": ctx.id,
            "ferroq_task": ctx.name,
            "ferroq_queue": w.queue.name,
            "ferroq_group": ctx.resource_group,
            "ferroq_attempt": ctx.attempt,
            "ferroq_outcome": outcome,
            "ferroq_worker": w.id,
        }
