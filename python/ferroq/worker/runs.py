"""A claimed task inside the worker: its run, a batch of runs handed to a batch task
together, the outcome a run ends with (what the completer records), and the counts of one
``Worker.run``."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from ..context import TaskContext
from ..task import BatchTask, TaskBase


@dataclass
class WorkerStats:
    """What one ``Worker.run`` did."""

    claimed: int = 0
    completed: int = 0
    retried: int = 0
    dead: int = 0
    lost: int = 0
    released: int = 0
    #: Claimed tasks this worker has no processor for, given back (see ``unknown_task_grace``).
    deferred: int = 0
    rescued: int = 0
    timed_out: int = 0
    #: Process pool only: child processes that died under a task, and replacements started.
    crashed: int = 0
    respawned: int = 0


class Run:
    """One claimed task in this worker, from claim until its outcome is committed."""

    __slots__ = ("ctx", "task", "payload", "deadline", "started", "run_us", "slot", "_settle")

    def __init__(self, ctx: TaskContext, task: TaskBase[Any, Any] | None, payload: bytes) -> None:
        self.ctx = ctx
        self.task = task
        self.payload = payload
        self.deadline: float | None = None
        #: perf_counter() when its processor started, and how long it ran (for metrics).
        self.started: float | None = None
        self.run_us: int | None = None
        #: Its entry in the worker's run journal while its processor runs or its outcome
        #: waits to be recorded (-1: none).
        self.slot = -1
        self._settle = threading.Lock()

    def settle(self) -> bool:
        """True for exactly one caller: the one that decides this run's outcome."""
        return self._settle.acquire(blocking=False)


class Batch:
    """Runs of one batch task and resource group, handed to the function together."""

    __slots__ = ("task", "runs", "due")

    def __init__(self, task: BatchTask[Any, Any], first: Run) -> None:
        self.task = task
        self.runs = [first]
        self.due = time.monotonic() + task.max_wait


#: What a runner hands the buffer's consumers: one run, or a batch of them.
Job = Run | Batch

# (run, result bytes | None, error json | None, retry delay ms | None, exception for the log,
#  counts toward the group's breaker, Retry-After hold of the group in ms | None)
Outcome = tuple[Run, "bytes | None", "str | None", "int | None", "BaseException | None", bool, "int | None"]


def runs_of(job: Job) -> list[Run]:
    return job.runs if isinstance(job, Batch) else [job]


def stop_clock(run: Run) -> None:
    if run.started is not None and run.run_us is None:
        run.run_us = int((time.perf_counter() - run.started) * 1_000_000)


def completed_null(run: Run) -> Outcome:
    """The outcome of a run that returned None, the usual result: stored as null without the
    serializer (the store keeps no result row for it)."""
    stop_clock(run)
    return (run, b"null", None, None, None, False, None)
