"""The ``Worker``: the coordinator of one worker's threads. It owns the state they share
(runs in flight, the local buffer, the stop events, the stats) and its lifecycle
(``run``: start the threads, wait for the claim loop, drain, stop them); each concept is a
collaborator in its own module (see the package docstring)."""

from __future__ import annotations

import logging
import os
import pickle
import queue as queue_module
import secrets
import socket
import threading
import time
from collections import deque
from functools import partial
from types import FrameType
from typing import Any, Callable, Iterable

from .. import _checks, _core
from ..context import TaskContext
from ..errors import InvalidArgument, LeaseLost, StorageError
from ..queue import Queue, is_database_url
from ..task import BatchTask
from .async_runner import AsyncRunner
from .autoscale import Autoscale, Autoscaler
from .breaker_view import BreakerView
from .claim_loop import PREFETCH_MAX, ClaimLoop
from .completer import Completer
from .failures import Outcomes
from .group_holds import GroupHolds, declared_breaker
from .hooks import RunHooks, RunOutcome, check_hook
from .journal import forget, open_journal
from .maintenance import Maintenance
from .process_pool import ProcessPool, check_importable
from .profiler import ProfiledClaimLoop, ProfiledCompleter, ProfiledRunners, Profiler, QueueView, TimedSerializer
from .runners import ThreadRunners
from .runs import Batch, Outcome, Run, WorkerStats, runs_of
from .signals import StopSignals
from .unknown import UnknownTasks

log = logging.getLogger("ferroq.worker")


def _group_names(groups: Iterable[str]) -> tuple[str, ...]:
    names = (groups,) if isinstance(groups, str) else tuple(groups)
    if not names:
        raise InvalidArgument("groups must name at least one resource group (None: every group)")
    for g in names:
        _core.check_name("resource group", _checks.text("group name", g))
    return names


class Worker:
    """Runs the processors registered on ``queue``.

    ``concurrency`` tasks run at once: with ``pool="thread"`` (default) up to that many
    sync processors on threads and up to that many async ones on one event loop (each kind
    has its own ``concurrency`` slots); with ``pool="process"`` each in one
    of ``concurrency`` child processes, so a timeout kills the run and a crash (segfault,
    ``os._exit``, out of memory) costs one attempt, not the worker (see
    ``ferroq.worker.process_pool``).
    The worker claims tasks in batches and keeps up to ``prefetch`` of them buffered, so
    a thread never waits on the database between tasks; outcomes are committed in batches
    by one completer thread. Each claim holds a lease of ``lease``
    seconds, renewed every lease/3; if this process dies, another worker's rescuer
    returns its tasks to pending once their leases expire. ``groups=[...]`` dedicates the
    worker to those resource groups: it claims no other group's tasks. A claimed task with
    no processor here (newer code enqueued it) is given back without using an attempt and
    claimed again later, growing delays apart; it goes dead (``UnknownTaskName``)
    ``unknown_task_grace`` seconds after it was first given back if no worker ran it.

    Hooks (see the README's "Lifecycle hooks"): ``on_start()`` and ``on_stop()`` are called
    once in this process when ``run`` starts (before anything is claimed; if it raises,
    ``run`` raises it) and when it stops (after every run is recorded or given back; an
    error is logged). ``before_run(ctx)`` and ``after_run(ctx, outcome)`` are called around
    each processor call, in the thread (an async processor: the event loop's thread) or
    the child process that runs it; a ``before_run`` that raises fails the run with its
    error, an ``after_run`` that raises is logged and changes nothing. With
    ``pool="process"`` they must be importable by reference (module-level functions).
    A batch task's runs each get them: ``before_run`` for each run before the batch function
    is called (a run whose hook raises is left out of the batch and fails with that error),
    ``after_run`` for each after it, with its own item's outcome.
    ``autoscale=ferroq.Autoscale(min=1, max=32)`` starts at ``min`` runner threads (with
    ``pool="process"``: children) and moves between ``min`` and ``max`` with the load: arrivals and their forecast
    times run time (Little's law), plus the backlog, within the groups' running caps; each
    change is a ``concurrency_changed`` event with its reason (see ``ferroq.worker.autoscale``).
    """

    #: Turns each run's end into its outcome (``ferroq.testing`` swaps in one whose retries
    #: are due at once, so a test does not sleep out the backoff).
    _outcomes_type: type[Outcomes] = Outcomes

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
        on_start: Callable[[], Any] | None = None,
        on_stop: Callable[[], Any] | None = None,
        before_run: Callable[[TaskContext], Any] | None = None,
        after_run: Callable[[TaskContext, RunOutcome], Any] | None = None,
        autoscale: Autoscale | None = None,
        profile: bool | str = False,
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
        #: A claimed task with no processor here is given back, not run (see ``unknown``).
        self._unknown = UnknownTasks(_checks.seconds("unknown_task_grace", unknown_task_grace))
        if name is not None:
            _checks.text("worker name", name)
        if not isinstance(pool, str) or pool not in ("thread", "process"):
            raise InvalidArgument(f'pool must be "thread" or "process", got {pool!r}')
        if pool == "process":
            try:  # each child gets its own copy
                pickle.dumps(queue.serializer)
            except Exception as e:  # noqa: BLE001 - pickling can fail in many ways
                raise InvalidArgument(
                    f'pool="process" sends the queue\'s serializer to its child processes, '
                    f"and {queue.serializer!r} cannot be pickled: {e}"
                ) from None
        if autoscale is not None and not isinstance(autoscale, Autoscale):
            raise InvalidArgument(f"autoscale must be a ferroq.Autoscale, got {autoscale!r}")
        #: How concurrency moves with the load (None: it stays ``concurrency``).
        self.autoscale = autoscale
        for hook_name, hook in (
            ("on_start", on_start),
            ("on_stop", on_stop),
            ("before_run", before_run),
            ("after_run", after_run),
        ):
            check_hook(hook_name, hook, pool)
        self._on_start, self._on_stop = on_start, on_stop
        #: Around each processor call (None: no hook and no tracing, processors are called directly).
        self._hooks = RunHooks.make(before_run, after_run)
        #: "thread" or "process".
        self.pool = pool
        #: Claim only tasks of these resource groups (None: every group).
        self.groups: tuple[str, ...] | None = None if groups is None else _group_names(groups)
        self.queue = queue
        self._max_payload = queue._engine.max_payload
        #: Tasks running at once (with ``autoscale``: now; it starts at ``autoscale.min``).
        self.concurrency = concurrency if autoscale is None else autoscale.min
        #: Claimed tasks kept waiting for a free thread. None: adaptive, about 50 ms of work
        #: at the observed rate (at least ``concurrency``), so fast tasks are claimed in
        #: large batches and slow ones are not hoarded from other workers.
        self.prefetch = prefetch
        self.lease = float(lease)
        self.poll_interval = float(poll_interval)
        self.rescue_interval = float(rescue_interval)
        self.shutdown_grace = float(shutdown_grace)
        self.handle_signals = handle_signals
        self._name = name
        self.id = ""
        self.stats = WorkerStats()
        # -- shared by the collaborators: runs in flight (by task id) under _lock, the local
        # buffer under _ready_cond, batches still filling (by task and group), outcomes on
        # their way to the completer (None: it stops).
        self._inflight: dict[int, Run] = {}
        self._lock = threading.Lock()
        self._ready: deque[Run | Batch] = deque()
        self._forming: dict[tuple[str, str], Batch] = {}
        self._ready_cond = threading.Condition()
        self._to_record: queue_module.SimpleQueue[list[Outcome] | None] = queue_module.SimpleQueue()
        self._stopping = threading.Event()
        self._hard_stop = threading.Event()
        self._closing = False
        self._maintenance_done = threading.Event()
        self._running = False
        self._journal: _core.RunJournal | None = None
        if profile not in (False, True, "time") or not isinstance(profile, (bool, str)):
            raise InvalidArgument(f'profile must be False, True or "time" (no memory figures), got {profile!r}')
        #: The profiler (None: off, and nothing on the per-task path knows of it).
        self._profiler = Profiler(memory=profile is True) if profile else None
        # -- per run: the breaker view, and the outcomes told to it.
        self._breakers = BreakerView(partial(declared_breaker, queue))
        self._outcomes = self._make_outcomes()
        # -- the collaborators, one concept each.
        if self._profiler is None:
            self._claims = ClaimLoop(self)
            self._runners = ThreadRunners(self)
            self._completer = Completer(self)
        else:
            self._claims = ProfiledClaimLoop(self, self._profiler)
            self._runners = ProfiledRunners(self, self._profiler)
            self._completer = ProfiledCompleter(self, self._profiler)
        self._async = AsyncRunner(self)
        self._maintenance = Maintenance(self)
        self._autoscaler: Autoscaler | None = None
        self._holds = GroupHolds(self)
        self._signals = StopSignals(self._stopping, self._hard_stop, queue._notify, self.shutdown_grace)

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
        if self._on_start is not None:
            self._on_start()  # raises: nothing was started or claimed
        self._running = True
        if self._profiler is not None:
            self._profiler.start()
        self.id = self._name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stats = WorkerStats()
        self._breakers = BreakerView(partial(declared_breaker, self.queue))
        self._outcomes = self._make_outcomes()
        self._stopping.clear()
        self._signals.reset(self.shutdown_grace)
        self._hard_stop.clear()
        self._closing = False
        self._maintenance_done.clear()
        # Before the pool starts: its children map the journal when they start, to note the
        # runs they start (a child started without it never does).
        self._journal = self._open_journal()
        if self.autoscale is not None:
            self.concurrency = self.autoscale.min
        pool = None
        if self.pool == "process":
            try:  # before anything is claimed: a task no child can find, a child that cannot start
                check_importable(self.queue._tasks.values())
                pool = ProcessPool(self, self.concurrency)
                pool.start()
            except BaseException:
                self._running = False
                self._journal = None
                self._call_on_stop()  # on_start ran: what it set up is torn down
                raise
        self._autoscaler = None if self.autoscale is None else Autoscaler(self, self.autoscale)
        self._runners.reset(pool)
        completer = threading.Thread(target=self._completer.run, name="ferroq-completer", daemon=True)
        maintenance = threading.Thread(target=self._maintenance.run, name="ferroq-maintenance", daemon=True)
        self._runners.start_threads(self.concurrency)
        for t in (completer, maintenance):
            t.start()
        if pool is None and any(t.is_async for t in self.queue._tasks.values()):
            self._async.start()
        previous = self._signals.install() if self.handle_signals else {}
        scaling = "" if self.autoscale is None else f", autoscaled within {self.autoscale.min}..{self.autoscale.max}"
        where = self.queue.path
        log.info(
            "worker %s started on %s (queue %r, concurrency %d, %s pool%s)",
            self.id,
            where if is_database_url(where) else os.path.abspath(where),
            self.queue.name,
            self.concurrency,
            self.pool,
            scaling,
        )
        try:
            self._claims.run(until_idle, until_empty)
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
                for t in self._runners.threads:
                    t.join(timeout=10)
                pool.close()
            self._to_record.put(None)
            completer.join(timeout=10)
            self._maintenance_done.set()  # after the drain: leases are renewed until here
            maintenance.join(timeout=5)
            self._async.stop()
            self._signals.restore(previous)
            self._running = False
            self._journal = None  # every run is recorded or given back: its file goes
            self._maintenance.unregister()
            if self._profiler is not None:
                self._profiler.stop()
            log.info("worker %s stopped: %s", self.id, self.stats)
            self._call_on_stop()
        return self.stats

    def _resize(self, n: int) -> None:
        """Autoscale: ``n`` tasks at once from now on (runner threads and claims follow)."""
        self.concurrency = n
        self._runners.resize(n)
        self.queue._notify()  # the claim loop's window changed

    def _make_outcomes(self) -> Outcomes:
        # Profiling: results are encoded through the timed serializer (the encode stage).
        queue = self.queue if self._profiler is None else self._runners_queue()
        return self._outcomes_type(queue, self._breakers, self._max_payload)

    def _runners_queue(self) -> Queue:
        assert self._profiler is not None
        return QueueView(self.queue, TimedSerializer(self.queue.serializer, self._profiler))  # type: ignore[return-value]

    def _call_on_stop(self) -> None:
        if self._on_stop is not None:
            try:
                self._on_stop()
            except Exception:
                log.exception("worker %s: on_stop hook %r failed", self.id, self._on_stop)

    def _open_journal(self) -> _core.RunJournal | None:
        """The run journal (see ``journal``), with room for every run this worker can hold."""
        prefetch = self.prefetch if self.prefetch is not None else PREFETCH_MAX
        most = self.concurrency if self.autoscale is None else self.autoscale.max
        batches = [t.max_size for t in self.queue._tasks.values() if isinstance(t, BatchTask)]
        return open_journal(self.queue._engine, self.id, most + max([prefetch, *batches]) + 64)

    # -- shared by the collaborators -----------------------------------------------------

    def _count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + n)

    def _heartbeat(self, contexts: list[TaskContext]) -> None:
        """Renews these runs' leases now (``TaskContext.heartbeat``, a child's request)."""
        self._maintenance.heartbeat(contexts)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.on_signal(signum, frame)

    def _skip_stopped(self, run: Run) -> bool:
        """True (and the run forgotten) if it must not run: its lease was lost while it waited,
        or it was given back."""
        if not run.ctx.stopped:
            return False
        if run.settle():
            with self._lock:
                self._inflight.pop(run.ctx.id, None)
        return True

    def _release(self, runs: list[Run]) -> None:
        """Gives runs back (pending again, the attempt returned) unless already settled."""
        for run in runs:
            if not run.settle():
                continue  # its outcome is already on its way to the completer
            run.ctx.stopped = True
            try:
                self.queue._engine.release(run.ctx.id, run.ctx.token)
                self._count("released")
            except (LeaseLost, StorageError) as e:
                log.warning("could not give back task %d: %s", run.ctx.id, e)
            forget(self._journal, (run,))
            with self._lock:
                self._inflight.pop(run.ctx.id, None)

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
        async_waiting = self._async.waiting
        while True:  # async runs waiting for a slot (the loop may take one meanwhile: it runs)
            try:
                waiting.append(async_waiting.popleft())
            except IndexError:
                break
        self._release([run for job in waiting for run in runs_of(job)])
        deadline = time.monotonic() + grace
        store = self.queue._engine
        while self._inflight and not self._hard_stop.is_set() and time.monotonic() < deadline:
            store.wait_for_change(store.change_token(), 0.1)
        with self._lock:
            left = list(self._inflight.values())
        self._release(left)
