"""The worker: claims tasks, runs processors on threads (sync) or an event loop (async),
heartbeats their leases, rescues expired leases of dead workers, applies retention."""

from __future__ import annotations

import asyncio
import logging
import os
import queue as queue_module
import secrets
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import FrameType
from typing import Any, Callable

from .context import TaskContext, _current
from .errors import (
    CorruptDatabase,
    DatabasePathError,
    Fail,
    InvalidArgument,
    LeaseLost,
    PayloadError,
    Retry,
    SchemaTooNew,
    StorageError,
    UnknownTaskName,
)
from .info import TaskError
from .policies import RetryPolicy
from .queue import Queue
from .task import TaskBase

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("ferroq.worker")


@dataclass
class WorkerStats:
    """What one ``Worker.run`` did."""

    claimed: int = 0
    completed: int = 0
    retried: int = 0
    dead: int = 0
    lost: int = 0
    released: int = 0
    rescued: int = 0


@dataclass(eq=False)
class _Run:
    """One claimed task in this worker."""

    ctx: TaskContext
    task: TaskBase[Any, Any] | None
    payload: bytes
    deadline: float | None
    _settle: threading.Lock = field(default_factory=threading.Lock)

    def settle(self) -> bool:
        """True for exactly one caller: the one that records this run's outcome."""
        return self._settle.acquire(blocking=False)


class _ThreadPool:
    """Daemon threads, so a hung processor never blocks interpreter exit."""

    def __init__(self, size: int, name: str) -> None:
        self._jobs: queue_module.SimpleQueue[Callable[[], None] | None] = queue_module.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(size)]
        for t in self._threads:
            t.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


class Worker:
    """Runs the processors registered on ``queue``.

    ``concurrency`` tasks run at once (threads for sync processors, one event loop for
    async ones). Each claim holds a lease of ``lease`` seconds, renewed every lease/3 while
    the processor runs; if this process dies, another worker's rescuer returns the task
    to pending once the lease expires.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        concurrency: int = 8,
        lease: float = 30.0,
        name: str | None = None,
        poll_interval: float = 0.5,
        rescue_interval: float = 1.0,
        shutdown_grace: float = 30.0,
        handle_signals: bool = True,
    ) -> None:
        if not isinstance(queue, Queue):
            raise InvalidArgument(f"Worker needs a ferroq.Queue, got {queue!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 10_000:
            raise InvalidArgument(f"concurrency must be an int in 1..=10000, got {concurrency!r}")
        for label, value in (("lease", lease), ("poll_interval", poll_interval),
                             ("rescue_interval", rescue_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidArgument(f"{label} must be a number of seconds > 0, got {value!r}")
        if lease < 0.3:
            raise InvalidArgument(f"lease must be at least 0.3 seconds, got {lease!r}")
        if not isinstance(shutdown_grace, (int, float)) or shutdown_grace < 0:
            raise InvalidArgument(f"shutdown_grace must be >= 0 seconds, got {shutdown_grace!r}")
        self.queue = queue
        self.concurrency = concurrency
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
        self._stopping = threading.Event()
        self._hard_stop = threading.Event()
        self._running = False
        self._pool: _ThreadPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None

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
        self._running = True
        self.id = self._name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stats = WorkerStats()
        self._stopping.clear()
        self._hard_stop.clear()
        self._pool = _ThreadPool(self.concurrency, "ferroq-run")
        if any(t.is_async for t in self.queue._tasks.values()):
            self._start_loop()
        maintenance = threading.Thread(target=self._maintain, name="ferroq-maintenance", daemon=True)
        maintenance.start()
        previous = self._install_signals()
        log.info("worker %s started on %s (queue %r, concurrency %d)",
                 self.id, self.queue.path, self.queue.name, self.concurrency)
        try:
            self._claim_loop(until_idle, until_empty)
            self._drain(self.shutdown_grace)
        finally:
            self._stopping.set()
            self._drain(0.0)  # on an exception (KeyboardInterrupt...), give running tasks back
            maintenance.join(timeout=5)
            self._pool.close()
            self._stop_loop()
            self._restore_signals(previous)
            self._running = False
            log.info("worker %s stopped: %s", self.id, self.stats)
        return self.stats

    def _count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + n)

    # -- claiming ----------------------------------------------------------------------

    def _claim_loop(self, until_idle: bool, until_empty: bool) -> None:
        store, name = self.queue._store, self.queue.name
        lease_ms = int(self.lease * 1000)
        while not self._stopping.is_set():
            seen = self.queue._changes
            free = self.concurrency - len(self._inflight)
            rows: list[Any] = []
            if free > 0:
                try:
                    rows = store.claim(name, self.id, free, lease_ms)
                except (CorruptDatabase, DatabasePathError, SchemaTooNew):
                    raise  # retrying cannot help; the operator must act
                except StorageError as e:
                    log.warning("claim failed, retrying: %s", e)
                    self._stopping.wait(1.0)
                    continue
            for row in rows:
                self._start(row)
            if rows:
                continue
            if not self._inflight and (until_idle or (until_empty and self._queue_empty())):
                return
            self.queue._wait_for_change(self._idle_wait(free), seen)

    def _queue_empty(self) -> bool:
        counts = self.queue.counts()
        return counts["pending"] == 0 and counts["running"] == 0

    def _idle_wait(self, free: int) -> float:
        """How long to sleep when nothing was claimed: until the next delayed task is due,
        at most ``poll_interval`` (other processes enqueue without waking us)."""
        if free <= 0:
            return self.poll_interval
        try:
            due = self.queue._store.next_run_at(self.queue.name)
        except StorageError:
            return self.poll_interval
        if due is None:
            return self.poll_interval
        return min(self.poll_interval, max(0.001, (due - self.queue._store.now_ms()) / 1000))

    def _start(self, row: tuple[Any, ...]) -> None:
        task_id, token, name, group, payload, _priority, attempt, max_attempts, created_ms = row
        task = self.queue._tasks.get(name)
        ctx = TaskContext(task_id, name, group, attempt, max_attempts,
                          datetime.fromtimestamp(created_ms / 1000, tz=timezone.utc), token, self)
        timeout = task.options.timeout if task is not None else None
        run = _Run(ctx, task, payload, None if timeout is None else time.monotonic() + timeout)
        self._count("claimed", 1)
        if task is None:
            exc = UnknownTaskName(f"no processor is registered for task {name!r} in worker {self.id}")
            self._record_failure(run, exc, None)
            return
        with self._lock:
            self._inflight[task_id] = run
        if task.is_async:
            assert self._loop is not None
            asyncio.run_coroutine_threadsafe(self._run_async(run), self._loop)
        else:
            assert self._pool is not None
            self._pool.submit(lambda: self._run_sync(run))

    # -- running -----------------------------------------------------------------------

    def _decode(self, run: _Run) -> tuple[list[Any], dict[str, Any]]:
        data = self.queue.serializer.loads(run.payload)
        return data["args"], data["kwargs"]

    def _run_sync(self, run: _Run) -> None:
        assert run.task is not None
        reset = _current.set(run.ctx)
        try:
            args, kwargs = self._decode(run)
            result = run.task.fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - a processor's failure is data, not a crash
            self._record_failure(run, exc, traceback.format_exc())
        else:
            self._record_success(run, result)
        finally:
            _current.reset(reset)
            self._done(run)

    async def _run_async(self, run: _Run) -> None:
        assert run.task is not None
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
        try:
            args, kwargs = self._decode(run)
            result = await run.task.fn(*args, **kwargs)
        except asyncio.CancelledError:
            if not timed_out:
                raise  # the worker is shutting down; the run was already released
            exc = TimeoutError(f"task {run.ctx.name!r} exceeded its timeout of {timeout}s and was cancelled")
            await asyncio.to_thread(self._record_failure, run, exc, None)
        except BaseException as exc:  # noqa: BLE001
            await asyncio.to_thread(self._record_failure, run, exc, traceback.format_exc())
        else:
            await asyncio.to_thread(self._record_success, run, result)
        finally:
            if timer is not None:
                timer.cancel()
            self._done(run)

    def _done(self, run: _Run) -> None:
        with self._lock:
            self._inflight.pop(run.ctx.id, None)
        self.queue._notify()

    def _record_success(self, run: _Run, result: Any) -> None:
        if not run.settle():
            return
        ctx = run.ctx
        try:
            data = self.queue.serializer.dumps(result)
            self.queue._store.complete(ctx.id, ctx.token, data)
        except PayloadError as e:
            self._fail(run, PayloadError(f"result of task {ctx.name!r} cannot be stored: {e}"), None, fatal=True)
        except LeaseLost:
            self._count("lost", 1)
            log.warning("task %d (%s) finished after its lease was lost; result discarded", ctx.id, ctx.name)
        except StorageError as e:
            log.error("task %d (%s): could not record completion: %s", ctx.id, ctx.name, e)
        else:
            self._count("completed", 1)
            log.debug("task %d (%s) completed", ctx.id, ctx.name)

    def _record_failure(self, run: _Run, exc: BaseException, tb: str | None) -> None:
        if run.settle():
            self._fail(run, exc, tb, fatal=self._is_fatal(run, exc))

    @staticmethod
    def _is_fatal(run: _Run, exc: BaseException) -> bool:
        """Whether the failure skips the remaining attempts: Fail, our own refusals, or the policy."""
        if isinstance(exc, Retry):
            return False
        if isinstance(exc, (Fail, UnknownTaskName, PayloadError)):
            return True
        policy = run.task.options.retry if run.task is not None else RetryPolicy()
        return policy.is_fatal(exc)

    def _fail(self, run: _Run, exc: BaseException, tb: str | None, *, fatal: bool) -> None:
        ctx = run.ctx
        delay: int | None = None
        if not fatal:
            policy = run.task.options.retry if run.task is not None else RetryPolicy()
            if isinstance(exc, Retry) and exc.delay is not None:
                delay = int(exc.delay * 1000)
            else:
                delay = policy.delay_ms(ctx.attempt)
        error = TaskError.from_exception(exc, tb).to_json()
        try:
            status = self.queue._store.fail(ctx.id, ctx.token, error, delay)
        except LeaseLost:
            self._count("lost", 1)
            log.warning("task %d (%s) failed after its lease was lost; failure discarded", ctx.id, ctx.name)
            return
        except StorageError as e:
            log.error("task %d (%s): could not record failure: %s", ctx.id, ctx.name, e)
            return
        if status == "dead":
            self._count("dead", 1)
            log.warning("task %d (%s) is dead after attempt %d: %s: %s",
                        ctx.id, ctx.name, ctx.attempt, type(exc).__name__, exc)
        else:
            self._count("retried", 1)
            log.info("task %d (%s) failed attempt %d, retrying in %.3fs: %s: %s",
                     ctx.id, ctx.name, ctx.attempt, (delay or 0) / 1000, type(exc).__name__, exc)

    # -- leases, timeouts, rescue, retention -------------------------------------------

    def _heartbeat(self, contexts: list[TaskContext]) -> None:
        if not contexts:
            return
        alive = self.queue._store.heartbeat([(c.id, c.token) for c in contexts], int(self.lease * 1000))
        for ctx, held in zip(contexts, alive):
            if not held:
                ctx._stopped.set()

    def _maintain(self) -> None:
        tick = min(0.1, self.lease / 6)
        now = time.monotonic()
        next_heartbeat, next_rescue = now + self.lease / 3, now
        next_prune = now
        while not (self._stopping.is_set() and not self._inflight):
            now = time.monotonic()
            try:
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
                retention = self.queue.retention
                if retention is not None and now >= next_prune and not self._stopping.is_set():
                    pruned = self.queue.prune()
                    if pruned:
                        log.info("pruned %d finished task(s)", pruned)
                    next_prune = now + retention.interval
            except StorageError as e:
                log.warning("maintenance step failed, will retry: %s", e)
            time.sleep(tick)

    def _expire_timeouts(self, now: float) -> None:
        with self._lock:
            late = [r for r in self._inflight.values()
                    if r.deadline is not None and now >= r.deadline and r.task is not None and not r.task.is_async]
        for run in late:
            if run.settle():
                run.ctx._stopped.set()
                timeout = run.task.options.timeout if run.task else None
                exc = TimeoutError(f"task {run.ctx.name!r} exceeded its timeout of {timeout}s "
                                   "(its thread keeps running; its late result will be discarded)")
                # Settled here; _fail does the recording without settling again.
                self._fail(run, exc, None, fatal=self._is_fatal(run, exc))

    # -- shutdown ----------------------------------------------------------------------

    def _drain(self, grace: float) -> None:
        """After claiming stops: wait up to ``grace`` seconds for running tasks, then release
        what is left (back to pending, the attempt given back)."""
        deadline = time.monotonic() + grace
        while self._inflight and not self._hard_stop.is_set() and time.monotonic() < deadline:
            self.queue._wait_for_change(0.1)
        with self._lock:
            left = list(self._inflight.values())
        for run in left:
            if run.settle():
                run.ctx._stopped.set()
                try:
                    self.queue._store.release(run.ctx.id, run.ctx.token)
                    self._count("released", 1)
                except (LeaseLost, StorageError) as e:
                    log.warning("could not release task %d at shutdown: %s", run.ctx.id, e)
        with self._lock:
            self._inflight.clear()

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
        if self._stopping.is_set():
            log.warning("second %s: stopping now, releasing running tasks", signal.Signals(signum).name)
            self._hard_stop.set()
        else:
            log.warning("%s: finishing running tasks (up to %.0fs); send again to stop now",
                        signal.Signals(signum).name, self.shutdown_grace)
            self._stopping.set()
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
