"""The worker: claims tasks in batches into a small local buffer, runs processors on threads
(sync) or an event loop (async), records outcomes in batched transactions, heartbeats
leases, rescues expired leases of dead workers, applies retention."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import queue as queue_module
import secrets
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import FrameType
from typing import Any, Iterable

from . import _checks, _core
from ._breaker_view import BreakerView
from ._unknown import UnknownTasks
from .context import TaskContext, _current
from .errors import (
    CorruptDatabase,
    DatabasePathError,
    Fail,
    InvalidArgument,
    LeaseLost,
    FerroqError,
    PayloadError,
    RateLimited,
    Retry,
    SchemaTooNew,
    StorageError,
    UnknownTaskName,
)
from .info import TaskError, clip_message
from .policies import CircuitBreaker, RetryPolicy
from .pool import ChildError, ProcessPool, Slot, check_importable
from .queue import Queue
from .task import BatchTask, TaskBase
from .tracebacks import format_traceback

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("ferroq.worker")

# Storage errors that retrying cannot fix: the worker stops and raises them.
_FATAL_STORAGE = (CorruptDatabase, DatabasePathError, SchemaTooNew)
_DEFAULT_POLICY = RetryPolicy()
_DEFAULT_BREAKER = CircuitBreaker()
#: How often a worker renews its registration, and flushes its metrics to the file.
WORKER_SEEN_INTERVAL = 2.0
METRICS_INTERVAL = 10.0
#: The adaptive prefetch holds about 50 ms of work, at most this many tasks.
PREFETCH_MAX = 10_000


def _stop_clock(run: _Run) -> None:
    if run.started is not None and run.run_us is None:
        run.run_us = int((time.perf_counter() - run.started) * 1_000_000)


def _completed_null(run: _Run) -> _Outcome:
    """The outcome of a run that returned None, the usual result: stored as null without the
    serializer (the store keeps no result row for it)."""
    _stop_clock(run)
    return (run, b"null", None, None, None, False, None)


def _matches(exc: BaseException, classes: tuple[type[BaseException], ...]) -> bool:
    """isinstance, also for an error a child process described by its class names."""
    return exc.matches(classes) if isinstance(exc, ChildError) else isinstance(exc, classes)


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


def _group_names(groups: Iterable[str]) -> tuple[str, ...]:
    names = (groups,) if isinstance(groups, str) else tuple(groups)
    if not names:
        raise InvalidArgument("groups must name at least one resource group (None: every group)")
    for g in names:
        _core.check_name("resource group", _checks.text("group name", g))
    return names


def _describe(exc: BaseException | None) -> str:
    # A child's error already reads "Type: message". Clipped like the stored message: one
    # log line per failure must not carry a multi-megabyte message.
    return clip_message(str(exc) if isinstance(exc, ChildError) else f"{type(exc).__name__}: {exc}")


class _Run:
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


class _Batch:
    """Runs of one batch task and resource group, handed to the function together."""

    __slots__ = ("task", "runs", "due")

    def __init__(self, task: BatchTask[Any, Any], first: _Run) -> None:
        self.task = task
        self.runs = [first]
        self.due = time.monotonic() + task.max_wait


# (run, result bytes | None, error json | None, retry delay ms | None, exception for the log,
#  counts toward the group's breaker, Retry-After hold of the group in ms | None)
_Outcome = tuple[_Run, "bytes | None", "str | None", "int | None", "BaseException | None", bool, "int | None"]


class Worker:
    """Runs the processors registered on ``queue``.

    ``concurrency`` tasks run at once: with ``pool="thread"`` (default) up to that many
    sync processors on threads and up to that many async ones on one event loop (each kind
    has its own ``concurrency`` slots); with ``pool="process"`` each in one
    of ``concurrency`` child processes, so a timeout kills the run and a crash (segfault,
    ``os._exit``, out of memory) costs one attempt, not the worker (see ``ferroq.pool``).
    The worker claims tasks in batches and keeps up to ``prefetch`` of them buffered, so
    a thread never waits on the database between tasks; outcomes are committed in batches
    by one completer thread. Each claim holds a lease of ``lease``
    seconds, renewed every lease/3; if this process dies, another worker's rescuer
    returns its tasks to pending once their leases expire. ``groups=[...]`` dedicates the
    worker to those resource groups: it claims no other group's tasks. A claimed task with
    no processor here (newer code enqueued it) is given back without using an attempt and
    claimed again later, growing delays apart; it goes dead (``UnknownTaskName``)
    ``unknown_task_grace`` seconds after it was first given back if no worker ran it.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        concurrency: int = 8,
        lease: float = 30.0,
        prefetch: int | None = None,
        name: str | None = None,
        poll_interval: float = 0.5,
        rescue_interval: float = 1.0,
        shutdown_grace: float = 30.0,
        handle_signals: bool = True,
        pool: str = "thread",
        groups: Iterable[str] | None = None,
        unknown_task_grace: float = 3600.0,
    ) -> None:
        if not isinstance(queue, Queue):
            raise InvalidArgument(f"Worker needs a ferroq.Queue, got {queue!r}")
        _checks.integer("concurrency", concurrency, 1, 10_000)
        if prefetch is not None:
            _checks.integer("prefetch", prefetch, 0, 100_000)
        if _checks.seconds("lease", lease, positive=True) < 0.3:
            raise InvalidArgument(f"lease must be at least 0.3 seconds, got {lease!r}")
        _checks.seconds("poll_interval", poll_interval, positive=True)
        _checks.seconds("rescue_interval", rescue_interval, positive=True)
        _checks.seconds("shutdown_grace", shutdown_grace)
        #: A claimed task with no processor here is given back, not run (see ``ferroq._unknown``).
        self._unknown = UnknownTasks(_checks.seconds("unknown_task_grace", unknown_task_grace))
        if name is not None:
            _checks.text("worker name", name)
        if not isinstance(pool, str) or pool not in ("thread", "process"):
            raise InvalidArgument(f'pool must be "thread" or "process", got {pool!r}')
        if pool == "process":
            try:  # each child gets its own copy
                pickle.dumps(queue.serializer)
            except Exception as e:  # noqa: BLE001 - pickling can fail in many ways
                raise InvalidArgument(f'pool="process" sends the queue\'s serializer to its child processes, '
                                      f"and {queue.serializer!r} cannot be pickled: {e}") from None
        #: "thread" or "process".
        self.pool = pool
        #: Claim only tasks of these resource groups (None: every group).
        self.groups: tuple[str, ...] | None = None if groups is None else _group_names(groups)
        self.queue = queue
        self._max_payload = queue._store.max_payload
        self.concurrency = concurrency
        #: Claimed tasks kept waiting for a free thread. None: adaptive, about 50 ms of work
        #: at the observed rate (at least ``concurrency``), so fast tasks are claimed in
        #: large batches and slow ones are not hoarded from other workers.
        self.prefetch = prefetch
        self._rate = 0.0  # completions per second, smoothed
        self.lease = float(lease)
        self.poll_interval = float(poll_interval)
        self.rescue_interval = float(rescue_interval)
        self.shutdown_grace = float(shutdown_grace)
        self.handle_signals = handle_signals
        self._name = name
        self.id = ""
        self.stats = WorkerStats()
        self._inflight: dict[int, _Run] = {}
        self._lock = threading.Lock()
        self._ready: deque[_Run | _Batch] = deque()
        self._forming: dict[tuple[str, str], _Batch] = {}  # batches still filling, by (task, group)
        self._ready_cond = threading.Condition()
        self._outcomes: queue_module.SimpleQueue[list[_Outcome] | None] = queue_module.SimpleQueue()
        self._stopping = threading.Event()
        self._hard_stop = threading.Event()
        self._signals = itertools.count()  # signals received by this run
        self._closing = False
        self._maintenance_done = threading.Event()
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_tasks: set[asyncio.Task[None]] = set()
        #: Claimed async runs not started yet: at most ``concurrency`` run at once.
        self._async_waiting: deque[_Run] = deque()
        self._loop_thread: threading.Thread | None = None
        self._journal: _core.RunJournal | None = None
        self._breakers = BreakerView(self._declared_breaker)

    # -- control -----------------------------------------------------------------------

    def stop(self) -> None:
        """Stops claiming; running tasks finish within ``shutdown_grace``, then ``run`` returns."""
        self._stopping.set()
        self.queue._notify()

    def run(self, *, until_idle: bool = False, until_empty: bool = False) -> WorkerStats:
        """Processes tasks until stopped (``stop()``, SIGINT or SIGTERM), or:

        - ``until_idle=True``: until no task is ready now and none is running here
          (delayed tasks and retries waiting out their backoff stay pending);
        - ``until_empty=True``: until the queue has no pending or running task at all,
          waiting for delayed tasks and retries to come due.
        """
        if self._running:
            raise InvalidArgument("this worker is already running")
        self.queue._require_intact()  # before anything is claimed or started
        self._running = True
        self.id = self._name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stats = WorkerStats()
        self._breakers = BreakerView(self._declared_breaker)
        self._stopping.clear()
        self._signals = itertools.count()
        self._hard_stop.clear()
        self._closing = False
        self._maintenance_done.clear()
        pool = None
        if self.pool == "process":
            try:  # before anything is claimed: a task no child can find, a child that cannot start
                check_importable(self.queue._tasks.values())
                pool = ProcessPool(self, self.concurrency)
                pool.start()
            except BaseException:
                self._running = False
                raise
        self._journal = self._open_journal()
        threads = [threading.Thread(target=self._runner, args=(None if pool is None else pool.slots[i],),
                                    name=f"ferroq-run-{i}", daemon=True)
                   for i in range(self.concurrency)]
        completer = threading.Thread(target=self._completer, name="ferroq-completer", daemon=True)
        maintenance = threading.Thread(target=self._maintain, name="ferroq-maintenance", daemon=True)
        for t in (*threads, completer, maintenance):
            t.start()
        if pool is None and any(t.is_async for t in self.queue._tasks.values()):
            self._start_loop()
        previous = self._install_signals()
        log.info("worker %s started on %s (queue %r, concurrency %d)",
                 self.id, os.path.abspath(self.queue.path), self.queue.name, self.concurrency)
        try:
            self._claim_loop(until_idle, until_empty)
            self._drain(self.shutdown_grace)
        finally:
            self._stopping.set()
            self._drain(0.0)  # on an exception (KeyboardInterrupt...), give running tasks back
            with self._ready_cond:
                self._closing = True
                self._ready_cond.notify_all()
            if pool is not None:
                # Runners only wait on their children here (a released run's child is killed
                # within a tick), so joining them is safe; then no child is left running.
                for t in threads:
                    t.join(timeout=10)
                pool.close()
            self._outcomes.put(None)
            completer.join(timeout=10)
            self._maintenance_done.set()  # after the drain: leases are renewed until here
            maintenance.join(timeout=5)
            self._stop_loop()
            self._restore_signals(previous)
            self._running = False
            self._journal = None  # every run is recorded or given back: its file goes
            self._unregister()
            log.info("worker %s stopped: %s", self.id, self.stats)
        return self.stats

    def _open_journal(self) -> _core.RunJournal | None:
        """The run journal that tells a rescuer, should this process die, which claimed tasks
        it had started (charged an attempt) and which it had not (given back whole)."""
        prefetch = self.prefetch if self.prefetch is not None else PREFETCH_MAX
        batches = [t.max_size for t in self.queue._tasks.values() if isinstance(t, BatchTask)]
        capacity = self.concurrency + max([prefetch, *batches]) + 64
        try:
            return self.queue._store.run_journal(self.id, capacity)
        except StorageError as e:
            log.warning("no run journal (%s): if this worker dies, each task it holds will count "
                        "as run once, started or not", e)
            return None

    def _note_start(self, run: _Run) -> None:
        """Right before a processor is called (see ``_open_journal``)."""
        run.started = time.perf_counter()
        journal = self._journal
        if journal is not None:
            run.slot = journal.started(run.ctx.id, run.ctx.token)

    def _note_handed(self, run: _Run) -> None:
        """Right before a run is sent to a child process (``pool="process"``), which notes
        its start itself (a worker killed before its child started the run did not run it)."""
        run.started = time.perf_counter()
        journal = self._journal
        if journal is not None:
            run.slot = journal.handed(run.ctx.id, run.ctx.token)

    def _note_return(self, run: _Run) -> None:
        """Right after a processor returned or raised: its outcome is on its way."""
        journal = self._journal
        if journal is not None and run.slot >= 0:
            journal.returned(run.slot, run.ctx.id)

    def _forget(self, runs: Iterable[_Run]) -> None:
        """Runs recorded or given back leave the journal (each exactly once: a run is either
        recorded or given back, whichever settles it)."""
        journal = self._journal
        if journal is not None:
            journal.forget([run.slot for run in runs])

    def _count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + n)

    # -- claiming ----------------------------------------------------------------------

    def _claim_loop(self, until_idle: bool, until_empty: bool) -> None:
        store, name = self.queue._store, self.queue.name
        lease_ms = int(self.lease * 1000)
        while not self._stopping.is_set():
            target = self.concurrency + self._prefetch_now()
            # Claim when a quarter of the window is free, so claims come in batches.
            batch_floor = max(1, target // 4)
            # Any commit after this point (an enqueue here or in another process, a flush
            # of outcomes, a stop request) ends the wait below at once.
            token = store.change_token()
            free = target - len(self._inflight)
            wait = self.poll_interval  # woken earlier by any flush or enqueue in this process
            # A group just held by failures here: claim nothing until the completer has written
            # them (its commit ends the wait), or its given-back tasks would come straight back.
            if self._breakers.held and self._breakers.awaiting_file():
                pass
            elif free >= batch_floor or (free > 0 and not self._ready):
                try:
                    rows = (store.claim(name, self.id, free, lease_ms) if self.groups is None
                            else store.claim_in_groups(name, list(self.groups), self.id, free, lease_ms))
                except _FATAL_STORAGE:
                    raise
                except StorageError as e:
                    log.warning("claim failed, retrying: %s", e)
                    self._stopping.wait(1.0)
                    continue
                if rows:
                    self._start(rows)
                    continue
                # Idle only if nothing committed since the claim: a run that finished
                # meanwhile may have put a retry back in the queue.
                if (not self._inflight and (until_idle or (until_empty and self._queue_empty()))
                        and not store.wait_for_change(token, 0)):
                    return
                wait = self._idle_wait()
            wait = min(wait, self._dispatch_due_batches())
            store.wait_for_change(token, wait)

    def _prefetch_now(self) -> int:
        if self.prefetch is not None:
            return self.prefetch
        # Room for a full batch of every batch task, so batches can fill.
        floor = max([self.concurrency] + [t.max_size for t in self.queue._tasks.values()
                                          if isinstance(t, BatchTask)])
        return min(PREFETCH_MAX, max(floor, int(self._rate * 0.05)))

    def _dispatch_due_batches(self) -> float:
        """Hands over batches whose wait is up; returns seconds until the next one is due."""
        now = time.monotonic()
        due = [key for key, b in self._forming.items() if b.due <= now]
        if due:
            with self._ready_cond:
                for key in due:
                    self._ready.append(self._forming.pop(key))
                self._ready_cond.notify(len(due))
        return min((b.due - now for b in self._forming.values()), default=self.poll_interval)

    def _queue_empty(self) -> bool:
        if self.groups is not None:  # only the groups this worker serves
            states = [self.queue.group(g).state() for g in self.groups]
            return all(st.pending == 0 and st.running == 0 for st in states)
        counts = self.queue.counts()
        return counts["pending"] == 0 and counts["running"] == 0

    def _idle_wait(self) -> float:
        """How long to sleep when nothing was claimed: until the next delayed task is due or
        a held group (rate limit, open breaker, Retry-After) may start again, at most
        ``poll_interval``. Any commit to the file ends the wait sooner."""
        store, name = self.queue._store, self.queue.name
        try:
            times = [t for t in (store.next_run_at(name), store.next_unblock_at(name)) if t is not None]
        except StorageError:
            return self.poll_interval
        if not times:
            return self.poll_interval
        return min(self.poll_interval, max(0.001, (min(times) - store.now_ms()) / 1000))

    def _start(self, rows: list[tuple[Any, ...]]) -> None:
        tasks = self.queue._tasks
        ready: list[_Run | _Batch] = []
        unknown: list[tuple[int, int, str]] = []
        coroutines: list[_Run] = []
        with self._lock:
            self.stats.claimed += len(rows)
            for task_id, token, name, group, payload, _priority, attempt, max_attempts, created_ms in rows:
                task = tasks.get(name)
                if task is None:
                    unknown.append((task_id, token, name))
                    continue
                run = _Run(TaskContext(task_id, name, group, attempt, max_attempts, created_ms, token, self),
                           task, payload)
                self._inflight[task_id] = run
                if isinstance(task, BatchTask):
                    key = (name, group)
                    forming = self._forming.get(key)
                    if forming is None:
                        self._forming[key] = _Batch(task, run)
                    else:
                        forming.runs.append(run)
                        if len(forming.runs) >= task.max_size:
                            ready.append(self._forming.pop(key))
                elif task.is_async and self._loop is not None:  # (a process pool's children run async too)
                    coroutines.append(run)
                else:
                    ready.append(run)
        if unknown:
            self._defer_unknown(unknown)
        if coroutines and self._loop is not None:
            self._async_waiting.extend(coroutines)
            # One wake-up of the loop per claim, not per task: each is a write to its pipe.
            self._loop.call_soon_threadsafe(self._start_async)
        if ready:
            with self._ready_cond:
                self._ready.extend(ready)
                self._ready_cond.notify(len(ready))

    def _defer_unknown(self, claims: list[tuple[int, int, str]]) -> None:
        """Gives back claimed ``(id, token, name)`` tasks no processor here can run. If that
        fails, their leases (not renewed: they are not in flight) expire and the rescuer
        gives them back, their attempts too (the run journal never saw them start)."""
        try:
            deferred, dead = self._unknown.give_back(self.queue._store, self.id, claims)
        except _FATAL_STORAGE:
            raise
        except StorageError as e:
            log.warning("could not give back %d task(s) without a processor here: %s", len(claims), e)
            return
        self._count("deferred", deferred)
        self._count("dead", dead)

    # -- running -----------------------------------------------------------------------

    def _runner(self, slot: Slot | None) -> None:
        """A processor thread: takes its fair share of the buffer, runs it (here, or in its
        ``slot``'s child process), hands the outcomes to the completer in one go."""
        try:
            self._run_jobs(slot)
        finally:
            if slot is not None:
                slot.close()

    def _run_jobs(self, slot: Slot | None) -> None:
        ready, cond = self._ready, self._ready_cond
        held = self._breakers.held  # empty unless a group's failures hold it here
        while True:
            with cond:
                while not ready and not self._closing:
                    cond.wait()
                if not ready:
                    return
                share = max(1, min(len(ready) // self.concurrency, 64))
                batch = [ready.popleft() for _ in range(min(share, len(ready)))]
            outcomes: list[_Outcome] = []
            flushed = time.monotonic()
            for n, job in enumerate(batch):
                if self._stopping.is_set():
                    # Stopping: start nothing new; the rest of this share goes back at once.
                    self._release([run for j in batch[n:] for run in (j.runs if isinstance(j, _Batch) else [j])])
                    break
                if held and self._breaker_holds(job):
                    continue
                try:
                    if isinstance(job, _Batch):
                        outcomes.extend(self._execute_batch(job) if slot is None else slot.run_batch(job))
                    else:
                        outcome = self._execute(job) if slot is None else slot.run(job)
                        if outcome is not None:
                            outcomes.append(outcome)
                except Exception as exc:  # a bug of ours must not kill the thread (logged below)
                    log.exception("internal error while running %s", job)
                    outcomes.extend(self._internal_failure(job, exc))
                now = time.monotonic()
                if held and self._breakers.tripped:  # this run's failure held its group here
                    self._outcomes.put(outcomes)  # the file hears of it at once
                    outcomes, flushed = [], now
                    self._give_back_tripped()
                if outcomes and now - flushed > 0.005:  # slow tasks: no outcome waits behind the next run
                    self._outcomes.put(outcomes)
                    outcomes, flushed = [], now
            if outcomes:
                self._outcomes.put(outcomes)

    def _skip_stopped(self, run: _Run) -> bool:
        """True (and the run forgotten) if it must not run: its lease was lost while it waited,
        or it was given back."""
        if not run.ctx.stopped:
            return False
        if run.settle():
            with self._lock:
                self._inflight.pop(run.ctx.id, None)
        return True

    def _internal_failure(self, job: _Run | _Batch, exc: Exception) -> list[_Outcome]:
        """Fails the unsettled runs of a job that hit a bug in the worker (retried per the
        default policy), so none is left holding its lease forever."""
        error = TaskError.from_exception(exc, format_traceback(exc)).to_json()
        runs = job.runs if isinstance(job, _Batch) else [job]
        return [(run, None, error, _DEFAULT_POLICY.delay_ms(run.ctx.attempt), exc, False, None)
                for run in runs if run.settle()]

    def _execute(self, run: _Run) -> _Outcome | None:
        assert run.task is not None
        if run.ctx.stopped and self._skip_stopped(run):
            return None
        timeout = run.task.options.timeout
        if timeout is not None:
            run.deadline = time.monotonic() + timeout
        ctx = run.ctx
        reset = _current.set(ctx)
        journal = self._journal  # _note_start and _note_return, inlined: once per task
        try:
            data = self.queue.serializer.loads(run.payload)
            run.started = time.perf_counter()
            if journal is not None:
                run.slot = journal.started(ctx.id, ctx.token)
            result = run.task.fn(*data["args"], **data["kwargs"])
        except BaseException as exc:  # noqa: BLE001 - a processor's failure is data, not a crash
            return self._settled_failure(run, exc, format_traceback(exc))
        finally:
            if journal is not None:
                journal.returned(run.slot, ctx.id)
            _current.reset(reset)
        if result is None:  # the usual result, without the general path's calls
            return _completed_null(run) if run.settle() else None
        return self._settled_success(run, result)

    def _execute_batch(self, batch: _Batch) -> list[_Outcome]:
        runs = [run for run in batch.runs if not self._skip_stopped(run)]
        if not runs:
            return []
        name = batch.task.name
        outcomes: list[_Outcome | None]
        try:
            items = []
            for run in runs:
                data = self.queue.serializer.loads(run.payload)
                items.append(data["args"][0] if data["args"] else data["kwargs"]["item"])
            for run in runs:
                self._note_start(run)
            try:
                results = batch.task.batch_fn(items)
            finally:
                for run in runs:
                    self._note_return(run)
            if not isinstance(results, (list, tuple)) or len(results) != len(runs):
                got = f"{type(results).__name__} of length {len(results)}" if isinstance(results, (list, tuple)) \
                    else type(results).__name__
                raise TypeError(f"batch task {name!r} must return a list of {len(runs)} results, got {got}")
        except BaseException as exc:  # noqa: BLE001 - the whole batch failed
            tb = format_traceback(exc)
            outcomes = [self._settled_failure(run, exc, tb) for run in runs]
        else:
            outcomes = []
            for run, result in zip(runs, results):
                if isinstance(result, BaseException):
                    item_tb = format_traceback(result) if result.__traceback__ else None
                    outcomes.append(self._settled_failure(run, result, item_tb))
                else:
                    outcomes.append(self._settled_success(run, result))
        return [o for o in outcomes if o is not None]

    def _start_async(self) -> None:
        """In the event loop: starts waiting async runs while fewer than ``concurrency`` run,
        each a task held until it ends (the loop itself keeps only weak references)."""
        assert self._loop is not None
        waiting, running = self._async_waiting, self._async_tasks
        while len(running) < self.concurrency:
            try:
                run = waiting.popleft()
            except IndexError:
                return
            task = self._loop.create_task(self._run_async(run))
            running.add(task)
            task.add_done_callback(self._async_done)

    def _async_done(self, task: asyncio.Task[None]) -> None:
        self._async_tasks.discard(task)
        self._start_async()

    async def _run_async(self, run: _Run) -> None:
        assert run.task is not None
        if run.ctx.stopped and self._skip_stopped(run):
            return  # given back (or its lease lost) while it waited for a free slot
        loop = asyncio.get_running_loop()
        if self._breakers.held and self._breakers.holds(run.ctx.resource_group):
            await loop.run_in_executor(None, self._release, [run])
            return
        _current.set(run.ctx)
        timeout = run.task.options.timeout
        timed_out = False
        me = asyncio.current_task()
        assert me is not None

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            me.cancel()

        # Our own timer, so a TimeoutError the processor raises itself stays its own error.
        timer = None if timeout is None else asyncio.get_running_loop().call_later(timeout, expire)
        outcome: _Outcome | None
        try:
            data = self.queue.serializer.loads(run.payload)
            self._note_start(run)
            try:
                result = await run.task.fn(*data["args"], **data["kwargs"])
            finally:
                self._note_return(run)
        except asyncio.CancelledError:
            if not timed_out:
                raise  # the worker is shutting down; the run was already released
            self._count("timed_out")
            exc = TimeoutError(f"task {run.ctx.name!r} exceeded its timeout of {timeout}s and was cancelled")
            outcome = self._settled_failure(run, exc, None)
        except BaseException as exc:  # noqa: BLE001
            outcome = self._settled_failure(run, exc, format_traceback(exc))
        else:
            outcome = self._settled_success(run, result)
        finally:
            if timer is not None:
                timer.cancel()
        if outcome is not None:
            self._outcomes.put([outcome])
        if self._breakers.tripped:
            loop.run_in_executor(None, self._give_back_tripped)  # not on the loop: it writes

    def _settled_success(self, run: _Run, result: Any) -> _Outcome | None:
        if not run.settle():
            return None
        if result is None:
            return _completed_null(run)
        try:
            data = self.queue.serializer.dumps(result)
        except PayloadError as e:
            return self._failure(run, PayloadError(f"result of task {run.ctx.name!r} cannot be stored: {e}"),
                                 None, fatal=True)
        return self._encoded(run, data)

    def _settled_encoded(self, run: _Run, data: bytes) -> _Outcome | None:
        """A result a child process already encoded."""
        return self._encoded(run, data) if run.settle() else None

    def _encoded(self, run: _Run, data: bytes) -> _Outcome:
        if len(data) > self._max_payload:
            exc = PayloadError(f"result of task {run.ctx.name!r} cannot be stored: it is {len(data)} bytes, "
                               f"over the limit of {self._max_payload} bytes")
            return self._failure(run, exc, None, fatal=True)
        _stop_clock(run)
        return (run, data, None, None, None, False, None)

    def _settled_failure(self, run: _Run, exc: BaseException, tb: str | None) -> _Outcome | None:
        if not run.settle():
            return None
        return self._failure(run, exc, tb, fatal=self._is_fatal(run, exc))

    @staticmethod
    def _is_fatal(run: _Run, exc: BaseException) -> bool:
        """Whether the failure skips the remaining attempts: Fail, our own refusals, or the policy."""
        if isinstance(exc, Retry):
            return False
        if isinstance(exc, (Fail, UnknownTaskName, PayloadError)):
            return True
        policy = run.task.options.retry if run.task is not None else _DEFAULT_POLICY
        if isinstance(exc, ChildError):
            return exc.is_fatal(policy)
        return policy.is_fatal(exc)

    def _failure(self, run: _Run, exc: BaseException, tb: str | None, *, fatal: bool) -> _Outcome:
        delay: int | None = None
        if not fatal:
            policy = run.task.options.retry if run.task is not None else _DEFAULT_POLICY
            hinted = exc.delay if isinstance(exc, (Retry, ChildError)) else None
            delay = policy.delay_ms(run.ctx.attempt) if hinted is None else int(hinted * 1000)
        error = exc.task_error() if isinstance(exc, ChildError) else TaskError.from_exception(exc, tb)
        # A rate limit holds the group (and gives the attempt back); the group's breaker
        # policy decides whether anything else counts toward opening it.
        hold = delay if _matches(exc, (RateLimited,)) else None
        counts = (hold is None and not _matches(exc, (UnknownTaskName, PayloadError))
                  and self._breaker_policy(run.ctx.resource_group).counts_failure(exc, _matches))
        if counts:  # as the run ends, before its outcome is written: see _breaker_view
            self._breakers.failed(run.ctx.resource_group)
        _stop_clock(run)
        return (run, None, error.to_json(), delay, exc, counts, hold)

    def _breaker_policy(self, group: str) -> CircuitBreaker:
        declared = self.queue._groups.get(group)
        if declared is not None and declared.breaker is not None:
            return declared.breaker
        return _DEFAULT_BREAKER

    # -- recording outcomes --------------------------------------------------------------

    def _completer(self) -> None:
        """Commits outcomes in batches: whatever has arrived while the last batch was being
        written goes into the next transaction, each row still fenced by its lease token."""
        outcomes = self._outcomes
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
            self._flush(batch)
            now = time.monotonic()
            # Completions per second, smoothed over flushes; an idle gap decays it.
            self._rate = 0.8 * self._rate + 0.2 * (len(batch) / max(now - last, 1e-4))
            last = now

    def _flush(self, batch: list[_Outcome]) -> None:
        rows = [(run.ctx.id, run.ctx.token, data, error, delay, counts, hold, run.run_us)
                for run, data, error, delay, _, counts, hold in batch]
        while True:
            try:
                answers = self.queue._store.finish_many(rows)
                break
            except _FATAL_STORAGE as e:
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
                if self._hard_stop.wait(0.5):
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
                log.warning("task %d (%s) finished after its lease was lost; outcome discarded", ctx.id, ctx.name,
                            extra=self._log_extra(ctx, "lost"))
            elif status == "completed":
                counts["completed"] += 1
            elif status == "dead":
                counts["dead"] += 1
                log.warning("task %d (%s) is dead after attempt %d: %s",
                            ctx.id, ctx.name, ctx.attempt, _describe(exc), extra=self._log_extra(ctx, "dead"))
            else:
                counts["retried"] += 1
                if log_retries:
                    log.info("task %d (%s) failed attempt %d, retrying in %.3fs: %s",
                             ctx.id, ctx.name, ctx.attempt, (delay or 0) / 1000, _describe(exc),
                             extra=self._log_extra(ctx, "retried"))
        with self._lock:
            for counter, n in counts.items():
                setattr(self.stats, counter, getattr(self.stats, counter) + n)
            inflight = self._inflight
            for run, *_ in batch:
                # A timed-out run's thread may still be busy; its slot frees when it returns.
                if inflight.get(run.ctx.id) is run:
                    del inflight[run.ctx.id]
        self._forget([run for run, *_ in batch])
        counted = () if all_completed else \
            [run.ctx.resource_group for run, _d, _e, _dl, _x, counts_, _h in batch if counts_]
        if counted:
            self._learn_circuits(counted)
        self.queue._notify()

    # -- in-process breaker view (see _breaker_view) ------------------------------------

    def _declared_breaker(self, group: str) -> tuple[int, float] | None:
        """The breaker settings this process declared for ``group``, until the file says."""
        declared = self.queue._groups.get(group)
        breaker = None if declared is None else declared.breaker
        return None if breaker is None else (breaker.failure_threshold, breaker.window)

    def _breaker_holds(self, job: _Run | _Batch) -> bool:
        """True (and the job given back, attempts kept) if its group is held here."""
        runs = job.runs if isinstance(job, _Batch) else [job]
        if not self._breakers.holds(runs[0].ctx.resource_group):
            return False
        self._release(runs)
        return True

    def _give_back_tripped(self) -> None:
        """Gives back the claimed, unstarted tasks of the groups just held by failures here."""
        groups = set()
        while True:
            try:
                groups.add(self._breakers.tripped.popleft())
            except IndexError:
                break
        if groups:
            self._give_back(groups, "failures in this worker")

    def _learn_circuits(self, counted: list[str]) -> None:
        """After writing counted failures (one group name each): the view follows the file's
        circuits; tasks of an open one still buffered here go back."""
        self._breakers.flushed(counted)
        opened = set()
        for group in set(counted):
            try:
                state, open_for_ms, settings = self.queue._store.circuit_view(self.queue.name, group)
            except FerroqError as e:
                log.warning("cannot read the circuit of group %s: %s", group, e)
                self._breakers.unknown(group)
                continue
            if self._breakers.learned(group, state, open_for_ms, settings):
                opened.add(group)
        if opened:
            self._give_back(opened, "circuit open")

    def _give_back(self, groups: set[str], why: str) -> None:
        """Gives back this worker's claimed but not yet started tasks of ``groups`` (buffered,
        or in a runner's share): they stay pending with their attempts."""
        with self._lock:
            waiting = [run for run in self._inflight.values()
                       if run.started is None and run.ctx.resource_group in groups]
        # _release settles each run first: one a runner starts meanwhile keeps its outcome.
        # A runner skips a released run when it reaches it (its context is stopped).
        if waiting:
            log.warning("group(s) %s held (%s): giving back %d claimed task(s) not started yet",
                        ", ".join(sorted(groups)), why, len(waiting))
            self._release(waiting)

    # -- leases, timeouts, rescue, retention -------------------------------------------

    def _heartbeat(self, contexts: list[TaskContext]) -> None:
        if not contexts:
            return
        alive = self.queue._store.heartbeat([(c.id, c.token) for c in contexts], int(self.lease * 1000))
        for ctx, held in zip(contexts, alive):
            if not held:
                ctx.stopped = True

    def _maintain(self) -> None:
        tick = min(0.1, self.lease / 6)
        now = time.monotonic()
        next_heartbeat, next_rescue = now + self.lease / 3, now
        next_prune = next_aging = next_seen = next_metrics = next_observe_prune = now
        while True:
            now = time.monotonic()
            try:
                if now >= next_seen:
                    self._register()
                    next_seen = now + WORKER_SEEN_INTERVAL
                if now >= next_metrics:
                    self.queue._store.flush_metrics()
                    next_metrics = now + METRICS_INTERVAL
                if now >= next_observe_prune and not self._stopping.is_set():
                    self.queue.observability.prune(self.queue)
                    next_observe_prune = now + 60.0
                if now >= next_heartbeat:
                    with self._lock:
                        contexts = [r.ctx for r in self._inflight.values()]
                    self._heartbeat(contexts)
                    next_heartbeat = now + self.lease / 3
                self._expire_timeouts(now)
                if now >= next_rescue and not self._stopping.is_set():
                    rescued = self.queue._store.rescue(self.queue.name)
                    if rescued:
                        self._count("rescued", len(rescued))
                        log.warning("rescued %d task(s) whose worker stopped heartbeating: %s",
                                    len(rescued), rescued[:10])
                        self.queue._notify()
                    next_rescue = now + self.rescue_interval
                aging = self.queue.priority_aging
                if aging is not None and now >= next_aging and not self._stopping.is_set():
                    self.queue._store.age_priorities(self.queue.name, max(1, int(aging.every * 1000)),
                                                     aging.step, aging.max_priority)
                    # A few passes per interval, so no task waits much more than `every`.
                    next_aging = now + aging.every / 4
                retention = self.queue.retention
                if retention is not None and now >= next_prune and not self._stopping.is_set():
                    pruned = self.queue.prune()
                    if pruned:
                        log.info("pruned %d finished task(s)", pruned)
                    next_prune = now + retention.interval
            except StorageError as e:
                log.warning("maintenance step failed, will retry: %s", e)
            if self._maintenance_done.wait(tick):
                return

    def _log_extra(self, ctx: TaskContext, outcome: str) -> dict[str, Any]:
        """Structured fields on task log records (for JSON log formatters)."""
        return {"ferroq_task_id": ctx.id, "ferroq_task": ctx.name, "ferroq_queue": self.queue.name,
                "ferroq_group": ctx.resource_group, "ferroq_attempt": ctx.attempt,
                "ferroq_outcome": outcome, "ferroq_worker": self.id}

    def _register(self) -> None:
        """Registers this worker in the file (or renews it), for health checks."""
        self.queue._store.worker_seen(self.id, self.queue.name, socket.gethostname(), os.getpid(),
                                      self.concurrency, self.pool)

    def _unregister(self) -> None:
        try:
            self.queue._store.flush_metrics()
            self.queue._store.worker_stopped(self.id)
        except StorageError as e:
            log.warning("could not record worker %s stopping: %s", self.id, e)

    def _expire_timeouts(self, now: float) -> None:
        with self._lock:
            late = [r for r in self._inflight.values()
                    if r.deadline is not None and now >= r.deadline and r.task is not None and not r.task.is_async]
        for run in late:
            if run.settle():
                run.ctx.stopped = True
                timeout = run.task.options.timeout if run.task else None
                self._count("timed_out")
                exc = TimeoutError(f"task {run.ctx.name!r} exceeded its timeout of {timeout}s "
                                   "(its thread keeps running; its late result will be discarded)")
                self._outcomes.put([self._failure(run, exc, None, fatal=self._is_fatal(run, exc))])
        if self._breakers.tripped:
            self._give_back_tripped()

    # -- shutdown ----------------------------------------------------------------------

    def _drain(self, grace: float) -> None:
        """After claiming stops: give back prefetched tasks at once, wait up to ``grace``
        seconds for running ones, then give back what is left (back to pending, the attempt
        returned)."""
        with self._ready_cond:
            waiting = list(self._ready)
            self._ready.clear()
        with self._lock:
            waiting += list(self._forming.values())
            self._forming.clear()
        while True:  # async runs waiting for a slot (the loop may take one meanwhile: it runs)
            try:
                waiting.append(self._async_waiting.popleft())
            except IndexError:
                break
        self._release([run for job in waiting for run in (job.runs if isinstance(job, _Batch) else [job])])
        deadline = time.monotonic() + grace
        store = self.queue._store
        while self._inflight and not self._hard_stop.is_set() and time.monotonic() < deadline:
            store.wait_for_change(store.change_token(), 0.1)
        with self._lock:
            left = list(self._inflight.values())
        self._release(left)

    def _release(self, runs: list[_Run]) -> None:
        for run in runs:
            if not run.settle():
                continue  # its outcome is already on its way to the completer
            run.ctx.stopped = True
            try:
                self.queue._store.release(run.ctx.id, run.ctx.token)
                self._count("released")
            except (LeaseLost, StorageError) as e:
                log.warning("could not give back task %d: %s", run.ctx.id, e)
            self._forget((run,))
            with self._lock:
                self._inflight.pop(run.ctx.id, None)

    def _install_signals(self) -> dict[int, Any]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # A second signal can run its handler inside this one (Python runs handlers between
        # any two bytecodes), e.g. while the first is still logging: each one counts itself
        # in first (one C call, so never interrupted) and acts on its own number. Logging
        # first made a quick second signal a first one too, and the stop waited out the
        # grace (seen in CI).
        first = next(self._signals) == 0 and not self._stopping.is_set()
        if first:
            self._stopping.set()
            log.warning("%s: finishing running tasks (up to %.0fs); send again to stop now",
                        signal.Signals(signum).name, self.shutdown_grace)
        else:
            self._stopping.set()
            self._hard_stop.set()
            log.warning("second %s: stopping now, releasing running tasks", signal.Signals(signum).name)
        self.queue._notify()

    # -- asyncio -----------------------------------------------------------------------

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
                # Runs still pending were released by _drain; cancel them and clean up.
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

        self._loop_thread = threading.Thread(target=serve, name="ferroq-asyncio", daemon=True)
        self._loop_thread.start()
        ready.wait()
        self._loop = loop

    def _stop_loop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            # A processor stuck in blocking code cannot be cancelled; do not wait forever.
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=5)
            self._loop = None
