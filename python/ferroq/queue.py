"""The Queue: one named queue in one SQLite file."""

from __future__ import annotations

import atexit
import builtins
import inspect
import logging
import os
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Iterable, Iterator, ParamSpec, Protocol, Sequence, TypeVar, overload

from . import _aio, _checks, _core
from . import alerts as alerts_module
from ._names import module_of
from .errors import CorruptDatabase, DatabasePathError, InvalidArgument, PayloadError, UnknownTaskName
from .groups import Circuit, Event, GroupState, ResourceGroup, group_name
from .info import STATUSES, TaskError, TaskInfo, Transition, from_ms
from .observe import Observability, Observable
from .periodic import Cron, Schedule, ScheduleState, state
from .routing import Route, Router, make_route
from .policies import Cache, CircuitBreaker, PriorityAging, Retention, RetryPolicy, Throttle
from .serializers import JsonSerializer, Serializer
from .task import AsyncTask, BatchTask, Task, TaskBase, TaskCall, TaskHandle, TaskOptions, _EncodedCall

__all__ = ["Queue", "Requeued", "LIST_LIMIT"]

#: How many tasks ``Queue.list`` and ``ferroq list`` return by default.
LIST_LIMIT = 50

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class TaskDecorator(Protocol):
    """What ``@q.task(...)`` with options returns."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncTask[P, R]: ...  # type: ignore[overload-overlap]

    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


# Every open store in this process. SQLite connections must not be open across fork():
# the child would inherit SQLite's lock bookkeeping but not the locks. So just before a
# fork every store waits for calls in flight, closes its connections and stays locked
# until the fork is done; the parent reopens on next use, the child builds its own.
_open_stores: weakref.WeakSet[_core.Store] = weakref.WeakSet()
_forking: list[_core.Store] = []


def _before_fork() -> None:
    # Stores dropped without close() close on threads of their own, inside SQLite without a
    # store lock to take: wait for those first (and hold new ones until the fork is done).
    _core.hold_closes()
    _forking[:] = list(_open_stores)
    for store in _forking:
        store.before_fork()


def _after_fork_in_parent() -> None:
    for store in _forking:
        store.after_fork_in_parent()
    _forking.clear()
    _core.release_closes()


def _after_fork_in_child() -> None:
    # The child builds fresh per-process state on first use; it must not touch the
    # parent's locks (a parent thread waiting on one does not exist here).
    _forking.clear()
    _core.release_closes()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def _close_at_exit() -> None:
    # A store dropped without close() closes on a thread of its own (see PyStore's Drop),
    # which the process's exit can cut short, leaving -wal and -shm files behind. Closing
    # what is still open here, before the interpreter tears down, leaves the file whole.
    for store in list(_open_stores):
        try:
            store.close()
        except Exception as e:  # noqa: BLE001 - whatever it is, the other stores still close
            logging.getLogger("ferroq").warning(
                "could not close %s at exit (the next open recovers it): %s", store.path, e
            )


atexit.register(_close_at_exit)


class _Unset:
    """The default of ``Queue.group`` settings: leave them as they are."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


class Queue(Observable):
    """A durable task queue stored in the SQLite file at ``path`` (created, mode 0600, if missing).

    ``durability="full"`` (default) makes every enqueue and completion survive power loss
    (synchronous=FULL); ``"normal"`` survives a process crash but may lose the last commits
    on power loss, and is faster. Several queues (``name``) can share one file.
    ``clock`` (tests and replayed benchmarks only): a ``ferroq.testing.ManualClock`` that
    every stored time of this process's queue is read from.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str = "default",
        durability: str = "full",
        retention: Retention | None = None,
        priority_aging: PriorityAging | None = None,
        max_payload: int = _core.DEFAULT_MAX_PAYLOAD,
        busy_timeout: float = 30.0,
        serializer: Serializer | None = None,
        events: str = "failures",
        observability: Observability | None = None,
        clock: _core.ManualClock | None = None,
    ) -> None:
        _core.check_name("queue", _checks.text("queue name", name))
        if durability not in ("full", "normal"):
            raise InvalidArgument(f'durability must be "full" or "normal", got {durability!r}')
        _checks.integer("max_payload", max_payload, 1, 2**40)
        _checks.seconds("busy_timeout", busy_timeout)
        if retention is not None and not isinstance(retention, Retention):
            raise InvalidArgument(f"retention must be a ferroq.Retention, got {retention!r}")
        if events not in ("failures", "all"):
            raise InvalidArgument(f'events must be "failures" or "all", got {events!r}')
        if observability is not None and not isinstance(observability, Observability):
            raise InvalidArgument(f"observability must be a ferroq.Observability, got {observability!r}")
        if priority_aging is not None and not isinstance(priority_aging, PriorityAging):
            raise InvalidArgument(f"priority_aging must be a ferroq.PriorityAging, got {priority_aging!r}")
        self.name = name
        self.durability = durability
        self.retention = retention
        self.priority_aging = priority_aging
        #: Which task transitions become rows of the events table: "failures" (failed,
        #: retried, dead, cancelled, progress) or "all" (also enqueued, started, completed).
        self.task_events = events
        self.observability = observability or Observability()
        self.serializer: Serializer = serializer or JsonSerializer()
        #: What this queue opened, secrets included (``path`` shows a URL without its
        #: password): other queues of the same store are opened from it.
        self._opened_as = _worker_path(_path(path))
        self._store = _core.Store(
            self._opened_as,
            durability=durability,
            busy_timeout=busy_timeout,
            max_payload=max_payload,
            task_events=events,
            clock=clock,
        )
        _open_stores.add(self._store)
        self._tasks: dict[str, TaskBase[Any, Any]] = {}
        self._groups: dict[str, ResourceGroup] = {}
        #: None until the first route: enqueues check it and nothing else.
        self._router: Router | None = None
        self._schedules: dict[str, Schedule] = {}
        #: Called by a worker with a claimed task's name when no processor is registered
        #: under it, before giving the task back: it may register one (an integration whose
        #: tasks are found by import path, as ``ferroq.contrib.django`` does). None: never.
        self._resolve: Callable[[str], object] | None = None
        self._alerts: dict[str, alerts_module.Alert] = {}

    def __repr__(self) -> str:
        return f"Queue({str(self.path)!r}, name={self.name!r})"

    def close(self) -> None:
        """Closes the connections; any later call reopens them."""
        self._store.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> str:
        """The database file (for a PostgreSQL URL: the URL without its password)."""
        return str(self._store.path)

    def _reopen(self, name: str, **options: Any) -> Queue:
        """Queue ``name`` of the same store, opened with its credentials."""
        return Queue(self._opened_as, name=name, **options)

    # -- declaring tasks ---------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> AsyncTask[P, R]: ...  # type: ignore[overload-overlap]

    @overload
    def task(self, fn: Callable[P, R]) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        priority: int = 0,
        resource_group: str | ResourceGroup = "default",
        max_attempts: int = 3,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        cache: Cache | None = None,
    ) -> TaskDecorator: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        priority: int = 0,
        resource_group: str | ResourceGroup = "default",
        max_attempts: int = 3,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        cache: Cache | None = None,
    ) -> Any:
        """Registers a processor. Use bare (``@q.task``) or with options (``@q.task(priority=5)``).

        The task name defaults to ``module.qualname`` of the function (in a script run as
        ``python app.py``: ``app.qualname``, as a worker importing ``app`` names it; in
        ``python -c`` or an interactive session give ``name=``). ``timeout`` (seconds)
        fails a run that takes longer: async processors are cancelled; a sync processor's
        thread cannot be killed, so its run is failed and its late result discarded.
        ``cache`` (a ``ferroq.Cache``): identical calls share one run and its result.
        """
        options = TaskOptions(
            priority=priority,
            resource_group=group_name(resource_group),
            max_attempts=max_attempts,
            retry=retry or RetryPolicy(),
            timeout=timeout,
            cache=cache,
        )

        def register(fn: Callable[..., Any]) -> TaskBase[Any, Any]:
            task_name = self._task_name(fn, name)
            kind = AsyncTask if inspect.iscoroutinefunction(fn) else Task
            task: TaskBase[Any, Any] = kind(self, fn, task_name, options)
            self._tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def _task_name(self, fn: Callable[..., Any], name: str | None) -> str:
        """The checked name a function registers under (default ``module.qualname``, the
        module named as an import names it, also for a script: see ``ferroq._names``)."""
        if not callable(fn):
            raise InvalidArgument(f"a task needs a function, got {fn!r}")
        task_name = name if name is not None else f"{module_of(fn)}.{fn.__qualname__}"
        _core.check_name("task", _checks.text("task name", task_name))
        if task_name in self._tasks and self._tasks[task_name].fn is not fn:
            raise InvalidArgument(f"a different function is already registered as task {task_name!r}")
        return task_name

    def batch_task(
        self,
        *,
        name: str | None = None,
        max_size: int = 50,
        max_wait: float = 0.1,
        priority: int = 0,
        resource_group: str | ResourceGroup = "default",
        max_attempts: int = 3,
        retry: RetryPolicy | None = None,
    ) -> Callable[[Callable[[list[T]], Sequence[R | BaseException]]], BatchTask[T, R]]:
        """Registers a batch processor: ``fn(items) -> results``. Each enqueue carries one
        item; a worker runs up to ``max_size`` items of one resource group together, waiting
        at most ``max_wait`` seconds for a batch to fill."""
        _checks.integer("max_size", max_size, 1, 10_000)
        _checks.seconds("max_wait", max_wait)
        options = TaskOptions(
            priority=priority,
            resource_group=group_name(resource_group),
            max_attempts=max_attempts,
            retry=retry or RetryPolicy(),
        )

        def register(fn: Callable[[list[T]], Sequence[R | BaseException]]) -> BatchTask[T, R]:
            task_name = self._task_name(fn, name)
            task: BatchTask[T, R] = BatchTask(self, fn, task_name, options, max_size, max_wait)
            self._tasks[task_name] = task
            return task

        return register

    # -- alerts --------------------------------------------------------------------------

    def alert(
        self,
        name: str,
        *,
        when: alerts_module.AnyRule,
        for_: float = 0.0,
        group: str | ResourceGroup | None = None,
        notify: alerts_module.Notify | None = None,
        webhook: str | None = None,
    ) -> alerts_module.Alert:
        """Declares an alert: it fires (an ``alert_fired`` event) once ``when`` (a rule from
        ``ferroq.alerts``: ``WaitP95(above=5)``, ``ErrorRate(above=0.1)``, ...) has held for
        ``for_`` seconds, on ``group`` or the whole queue, and resolves (``alert_resolved``)
        when it no longer holds. The workers of this queue evaluate it every 10 s, once
        across processes; each transition is passed to ``notify(transition)`` (in the worker
        that evaluated it) and POSTed as JSON to ``webhook`` by a ferroq task (retried with
        backoff, so a webhook down for a while still hears of it)."""
        gname = None if group is None else group_name(group)
        entry = alerts_module.make_alert(name, when, for_, gname, notify, webhook)
        if name in self._alerts:
            raise InvalidArgument(f"an alert named {name!r} is already declared")
        if webhook is not None and alerts_module.WEBHOOK_TASK not in self._tasks:
            self.task(
                name=alerts_module.WEBHOOK_TASK, max_attempts=10, retry=RetryPolicy(base_delay=5.0, max_delay=600.0)
            )(alerts_module.post_webhook)
        self._alerts[name] = entry
        return entry

    def check_alerts(self) -> list[alerts_module.Transition] | None:
        """Evaluates the alerts declared here now, if no other process did within the
        evaluation period (None then): what fired or resolved. Workers call this."""
        return alerts_module.check_alerts(self, self._alerts)

    def alerts(self) -> list[alerts_module.AlertState]:
        """Every alert as its latest event left it (from any process): firing ones first."""
        return alerts_module.states(self)

    # -- periodic tasks ----------------------------------------------------------------

    def schedule(
        self,
        task: TaskBase[Any, Any],
        *,
        cron: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        tz: str = "UTC",
        missed: str = "once",
        name: str | None = None,
    ) -> Schedule:
        """Enqueues ``task(*args, **kwargs)`` at every tick of ``cron`` (5 fields, in time
        zone ``tz``), once per tick however many workers run. The workers of this queue
        enqueue it; a tick missed while none ran is enqueued once when one starts
        (``missed="once"``; several missed ticks make one run) or not at all (``"skip"``).
        ``name`` (default: the task's name) identifies the schedule in the file."""
        if not isinstance(task, TaskBase) or self._tasks.get(task.name) is not task:
            raise InvalidArgument(f"schedule takes a task registered on queue {self.name!r}, got {task!r}")
        if task.options.cache is not None:  # each tick would be answered by the first one's result
            raise InvalidArgument(f"task {task.name!r} is cached: a schedule needs a task that runs at every tick")
        name = task.name if name is None else name
        _core.check_name("schedule", _checks.text("schedule name", name))
        if name in self._schedules:
            raise InvalidArgument(f"a schedule named {name!r} is already declared (give another name=)")
        kwargs = dict(kwargs or {})
        task.call(*args, **kwargs)  # checks the arguments and that they serialize, now
        entry = Schedule(name, task, Cron(cron, tz), missed, tuple(args), kwargs)
        self._schedules[name] = entry
        return entry

    def periodic(
        self,
        cron: str,
        *,
        tz: str = "UTC",
        missed: str = "once",
        name: str | None = None,
    ) -> Callable[[Callable[..., Any]], TaskBase[Any, Any]]:
        """Declares a task (if the function is not one yet) run with no arguments at every
        tick of ``cron``: ``@q.periodic("*/5 * * * *", tz="Europe/Berlin")``. See ``schedule``."""
        Cron(cron, tz)  # a bad expression fails at the decorator, not at its use

        def register(fn: Callable[..., Any]) -> TaskBase[Any, Any]:
            task: TaskBase[Any, Any] = fn if isinstance(fn, TaskBase) else self.task(fn)
            self.schedule(task, cron=cron, tz=tz, missed=missed, name=name)
            return task

        return register

    @property
    def schedules(self) -> dict[str, Schedule]:
        """Declared periodic tasks by schedule name."""
        return dict(self._schedules)

    def schedule_states(self) -> builtins.list[ScheduleState]:
        """The schedules workers of this queue declared in the file, with their last and next
        runs (a schedule removed from the code stays listed, as last declared)."""
        now = int(time.time() * 1000)
        return [state(row, now) for row in self._store.schedules(self.name)]

    @property
    def tasks(self) -> dict[str, TaskBase[Any, Any]]:
        """Registered processors by task name."""
        return dict(self._tasks)

    # -- enqueueing --------------------------------------------------------------------

    def enqueue(self, name: str, /, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """Enqueues a registered task by name. Raises ``UnknownTaskName`` if none is registered."""
        task = self._tasks.get(name)
        if task is None:
            raise UnknownTaskName(f"no task named {name!r} is registered on queue {self.name!r}")
        return task.enqueue(*args, **kwargs)

    def enqueue_many(self, calls: Iterable[TaskCall[Any]]) -> list[int]:
        """Enqueues many calls (from ``task.call(...)``) in one transaction; returns their ids."""
        # The core reads each call as the iterable yields it: no list or tuple per call here,
        # and calls from a generator die young (cheap for the garbage collector). It checks
        # the payload of a hand-built TaskCall only (one task.call() made came from the
        # serializer): a payload the worker cannot decode would be stored, then dead.
        return self._store.enqueue_calls(self.name, calls, TaskCall, _EncodedCall, self._check_payload)

    def _check_payload(self, payload: bytes) -> None:
        """Raises PayloadError unless ``payload`` decodes, with this queue's serializer, to
        what ``task.call`` encodes: ``{"args": [...], "kwargs": {...}}``."""
        serializer = type(self.serializer).__name__
        try:
            data = self.serializer.loads(payload)
        except Exception as e:  # noqa: BLE001 - whatever the serializer raises
            raise PayloadError(
                f"the payload of a hand-built TaskCall cannot be decoded by the queue's serializer "
                f"({serializer}): {type(e).__name__}: {e}"
            ) from None
        if not (
            isinstance(data, dict)
            and isinstance(data.get("args"), (list, tuple))
            and isinstance(data.get("kwargs"), dict)
        ):
            raise PayloadError(
                f"the payload of a hand-built TaskCall must decode ({serializer}) to "
                f"{{'args': [...], 'kwargs': {{...}}}}, got {data!r:.200}"
            )

    def _enqueue_one(self, call: TaskCall[R]) -> TaskHandle[R]:
        ((task_id, created),) = self._store.enqueue(self.name, [call.core_task()])
        return TaskHandle(self, task_id, created)

    # -- asyncio producers (see ferroq._aio): the same calls, off the event loop -----------

    async def aenqueue(self, name: str, /, *args: Any, **kwargs: Any) -> TaskHandle[Any]:
        """``enqueue`` for asyncio code (by task name)."""
        task = self._tasks.get(name)
        if task is None:
            raise UnknownTaskName(f"no task named {name!r} is registered on queue {self.name!r}")
        return await task.aenqueue(*args, **kwargs)

    async def aenqueue_many(self, calls: Iterable[TaskCall[Any]]) -> builtins.list[int]:
        """``enqueue_many`` for asyncio code: one transaction, off the event loop. The
        calls are read here, on the loop's thread (a generator runs where it was made)."""
        if not isinstance(calls, (builtins.list, tuple)):
            calls = builtins.list(calls)
        return await _aio.run(self.enqueue_many, calls)

    async def _aenqueue_one(self, call: TaskCall[R]) -> TaskHandle[R]:
        core = call.core_task()  # run_at from a delay counts from the call, not the commit
        task_id, created = await _aio.batcher(self).submit(core)
        return TaskHandle(self, task_id, created)

    async def aget(self, task_id: int) -> TaskInfo:
        """``get`` for asyncio code: the read runs off the event loop."""
        task_id = _task_id(task_id)
        return TaskInfo.from_core(await _aio.run(self._store.get, self.name, task_id), self.serializer.loads)

    # -- reading and operating ---------------------------------------------------------

    def handle(self, task_id: int) -> TaskHandle[Any]:
        """A handle for an existing task id."""
        return TaskHandle(self, task_id)

    def get(self, task_id: int) -> TaskInfo:
        """The task as stored now. Raises ``UnknownTask`` if there is none with this id, and
        ``CorruptTask`` if its row holds a value of the wrong type (edited outside ferroq; see
        ``TaskInfo`` for a payload the serializer cannot decode)."""
        return TaskInfo.from_core(self._store.get(self.name, _task_id(task_id)), self.serializer.loads)

    def cancel(self, task_id: int) -> None:
        """pending -> cancelled. Raises ``InvalidTransition`` if the task is not pending."""
        self._store.cancel(self.name, _task_id(task_id))

    def requeue(self, task_id: int) -> None:
        """dead (or cancelled) -> pending, with a fresh set of attempts."""
        self._store.requeue(self.name, _task_id(task_id))

    def history(self, task_id: int) -> list[Transition]:
        """Every status change of the task, oldest first."""
        return [
            Transition(frm, to, from_ms(at), worker, TaskError.parse(err))  # type: ignore[arg-type]
            for frm, to, at, worker, err in self._store.history(self.name, _task_id(task_id))
        ]

    def counts(self) -> dict[str, int]:
        """Number of tasks in each status (every status present)."""
        counts = dict(self._store.counts(self.name))
        return {status: counts.get(status, 0) for status in STATUSES}

    def prune(self, retention: Retention | None = None) -> int:
        """Deletes finished tasks beyond ``retention`` (default: the queue's); returns how many.
        Workers call this periodically when the queue has a retention."""
        if retention is not None and not isinstance(retention, Retention):
            raise InvalidArgument(f"prune takes a ferroq.Retention, got {retention!r}")
        retention = retention or self.retention
        if retention is None:
            return 0
        return int(self._store.prune(self.name, *retention.as_core_args()))

    def pragmas(self) -> dict[str, str]:
        """SQLite settings as the connection reads them back (journal_mode, synchronous...)."""
        return dict(self._store.pragmas())

    def check(self) -> list[str]:
        """SQLite's quick_check: ``["ok"]`` when the file is intact, else the problems found."""
        try:
            return list(self._store.quick_check())
        except CorruptDatabase as e:  # damage bad enough that quick_check cannot finish
            return [str(e)]

    def _require_intact(self) -> None:
        """Raises ``CorruptDatabase`` unless quick_check finds the file intact. Opening reads
        only the schema, so damage elsewhere is found by the first read that touches it; a
        worker checks first rather than run (and record outcomes) on a damaged file."""
        findings = self.check()
        if findings != ["ok"]:
            shown = "; ".join(findings[:3]) + (f" (and {len(findings) - 3} more)" if len(findings) > 3 else "")
            raise CorruptDatabase(
                f"database {self.path} is damaged (quick_check: {shown[:1000]}); "
                f"restore it from a backup (`ferroq health` reports it)"
            )

    # -- resource groups, pausing, events ------------------------------------------------

    def route(
        self,
        to: str | ResourceGroup,
        *,
        task: TaskBase[Any, Any] | str | Sequence[TaskBase[Any, Any] | str] | None = None,
        when: Callable[..., bool] | None = None,
        slower_than: float | None = None,
        window: float = 600.0,
        min_runs: int = 20,
        name: str | None = None,
    ) -> Route:
        """Sends matching enqueues to group ``to`` (give it its own concurrency with
        ``q.group(to, throttle=ferroq.Throttle(max_concurrency=n))``). A rule matches a call of
        ``task`` (a task, a name, or several; None: every task) when ``when(*args, **kwargs)``
        is true and, with ``slower_than`` (seconds), when the task's p95 run time over the
        last ``window`` seconds, over at least ``min_runs`` runs of every worker, exceeds it.
        Rules apply in the order added, the first match wins, and override the declared
        group; the reason is stored with the task (``TaskInfo.route``, ``ferroq inspect``).
        Declare routes where the producers declare their tasks: they apply at enqueue."""
        _core.check_name("resource group", _checks.text("route target", group_name(to)))
        rule = make_route(group_name(to), task, when, slower_than, window, min_runs, name)
        if self._router is None:
            self._router = Router(self)
        self._router.add(rule)
        return rule

    def routes(self) -> list[Route]:
        """The routes declared in this process, in the order they apply."""
        return [] if self._router is None else list(self._router.routes)

    def group(
        self,
        name: str,
        *,
        breaker: CircuitBreaker | None | _Unset = _UNSET,
        throttle: Throttle | None | _Unset = _UNSET,
    ) -> ResourceGroup:
        """The resource group ``name`` of this queue. Given ``breaker`` and/or ``throttle``,
        stores them in the database, where every worker process on the file enforces them
        (the last process to declare a group sets its limits; ``None`` removes one). Without
        them, returns the group as declared so far."""
        _core.check_name("resource group", _checks.text("group name", name))
        if breaker is not _UNSET and breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise InvalidArgument(f"breaker must be a ferroq.CircuitBreaker or None, got {breaker!r}")
        if throttle is not _UNSET and throttle is not None and not isinstance(throttle, Throttle):
            raise InvalidArgument(f"throttle must be a ferroq.Throttle or None, got {throttle!r}")
        known = self._groups.get(name)
        if isinstance(breaker, _Unset) and isinstance(throttle, _Unset):
            return known or ResourceGroup(self, name, None, None)
        new_breaker = (known.breaker if known else None) if isinstance(breaker, _Unset) else breaker
        new_throttle = (known.throttle if known else None) if isinstance(throttle, _Unset) else throttle
        self._store.configure_group(
            self.name,
            name,
            None if new_breaker is None else new_breaker.as_core_args(),
            None if new_throttle is None else new_throttle.as_core_args(),
        )
        group = self._groups[name] = ResourceGroup(self, name, new_breaker, new_throttle)
        self._notify()
        return group

    def circuit(self, group: str | ResourceGroup) -> Circuit:
        """The circuit breaker of a resource group (``.state``, ``.open()``, ``.close()``...)."""
        name = group_name(group)
        _core.check_name("resource group", _checks.text("group name", name))
        return Circuit(self, name)

    def groups(self) -> list[GroupState]:
        """Every group with settings or unfinished tasks, as it stands now."""
        return [GroupState.from_core(self._store.group_info(self.name, n)) for n in self._store.group_names(self.name)]

    def pause(self) -> bool:
        """Stops every worker of this queue from claiming (tasks stay pending; running ones
        finish), until ``resume()``; persisted. Returns False if it was already paused."""
        return bool(self._store.set_queue_paused(self.name, True))

    def resume(self) -> bool:
        """Lets workers claim again. Returns False if the queue was not paused."""
        changed = bool(self._store.set_queue_paused(self.name, False))
        self._notify()
        return changed

    @property
    def paused(self) -> bool:
        return bool(self._store.queue_paused(self.name))

    def events(self, *, after: int = 0, group: str | ResourceGroup | None = None, limit: int = 1000) -> list[Event]:
        """Recorded events with id greater than ``after``, oldest first (pass the last id seen
        to tail them, from any process); with ``group``, that group's own events (circuit,
        throttle, pause)."""
        _checks.integer("after", after, 0, _checks.INT64_MAX)
        _checks.integer("limit", limit, 1, 1_000_000)
        return [Event.from_core(row) for row in self._store.events(self.name, _group_or_none(group), after, limit)]

    def latest_events(
        self, n: int = 20, *, kinds: Iterable[str] | None = None, up_to: int | None = None
    ) -> builtins.list[Event]:
        """The newest ``n`` events (of ``kinds``, if given) with id at most ``up_to``
        (default: all so far), oldest first. The kinds are filtered before the ``n`` are taken."""
        _checks.integer("n", n, 1, 1_000_000)
        wanted = (
            [] if kinds is None else [_checks.text("kind", k) for k in ([kinds] if isinstance(kinds, str) else kinds)]
        )
        last = self.last_event_id() if up_to is None else _checks.integer("up_to", up_to, 0, _checks.INT64_MAX)
        return [Event.from_core(row) for row in self._store.latest_events(self.name, wanted, last, n)]

    def last_event_id(self) -> int:
        """The id of the newest event in the file (0 if none): pass it as ``after`` to
        ``watch_events``/``events`` to see only what happens from now on."""
        return int(self._store.last_event_id())

    def change_token(self) -> tuple[int, int]:
        """Where the file stands now: pass it to ``wait_for_change`` (dashboards tailing the
        file wait on this instead of polling)."""
        return self._store.change_token()

    def wait_for_change(self, token: tuple[int, int], timeout: float) -> bool:
        """Waits until anything commits to the file after ``token`` (from ``change_token``),
        by this process or another (seen within about a millisecond), or ``timeout`` seconds
        pass; True if something did."""
        _checks.seconds("timeout", timeout)
        return bool(self._store.wait_for_change(token, min(float(timeout), 3600.0)))

    # -- in-process wake-ups -----------------------------------------------------------

    @property
    def _engine(self) -> _core.Store:
        """The storage engine, for ``ferroq.worker``: the one door to it from outside the
        facade (``queue.py``, ``task.py``, ``groups.py``, ``observe.py``, ``context.py``)."""
        return self._store

    def _notify(self) -> None:
        """Wakes this process's waiters (idle workers, result waiters) at once. Every write
        that changes rows does this by itself; this is for other events (a stop request)."""
        self._store.notify()

    # == operations: listings, bulk requeue and purge (the CLI, dashboards) ==============
    # Keyset pagination by id and small transactions: a listing page costs the same deep in
    # a million tasks as at the start, and bulk changes never hold the write lock for long.

    def list(
        self,
        *,
        status: str | Iterable[str] | None = None,
        group: str | ResourceGroup | None = None,
        name: str | None = None,
        limit: int = LIST_LIMIT,
        after_id: int | None = None,
        newest_first: bool = False,
        until_id: int | None = None,
    ) -> builtins.list[TaskInfo]:
        """Tasks matching the filters, by id (oldest first, or ``newest_first``), at most
        ``limit``. For the next page pass the last id seen as ``after_id`` ("after" in the
        listing's order: smaller ids when ``newest_first``). A task that cannot be read is
        listed too, with ``TaskInfo.corrupt`` set.

        ``until_id`` ends the page at that id (inclusive, in the listing's order), full or
        not: a filter few tasks match reads every row until the page fills, so a caller that
        must answer in bounded time (a dashboard) reads a window of ids at a time."""
        _checks.integer("limit", limit, 0, 100_000)
        if after_id is not None:
            _task_id(after_id)
        if until_id is not None:
            _checks.integer("until_id", until_id, 0, _checks.INT64_MAX)
        rows = self._store.list_tasks(
            self.name,
            _statuses(status),
            _group_or_none(group),
            _name_or_none(name),
            after_id,
            bool(newest_first),
            limit,
            until_id,
        )
        return [TaskInfo.from_core(row, self.serializer.loads) for row in rows]

    def iter_tasks(
        self,
        *,
        status: str | Iterable[str] | None = None,
        group: str | ResourceGroup | None = None,
        name: str | None = None,
        newest_first: bool = False,
        page_size: int = 500,
    ) -> Iterator[TaskInfo]:
        """Every matching task, read ``page_size`` at a time: memory stays flat whatever
        the number of tasks (exports)."""
        _checks.integer("page_size", page_size, 1, 100_000)
        after: int | None = None
        while True:
            page = self.list(
                status=status, group=group, name=name, limit=page_size, after_id=after, newest_first=newest_first
            )
            yield from page
            if len(page) < page_size:
                return
            after = page[-1].id

    def count_finished(
        self,
        status: str | Iterable[str],
        *,
        older_than: float | None = None,
        group: str | ResourceGroup | None = None,
        name: str | None = None,
    ) -> int:
        """Finished tasks (``completed``, ``dead`` or ``cancelled``) that ``purge`` with the
        same arguments would delete."""
        group_, name_ = _group_or_none(group), _name_or_none(name)
        return sum(
            self._store.count_finished(self.name, s, self._cutoff(older_than), group_, name_) for s in _statuses(status)
        )

    def count_pending(self, *, group: str | ResourceGroup | None = None, name: str | None = None) -> int:
        """Pending tasks (ready or delayed) that ``cancel_pending`` with the same arguments
        would cancel."""
        return self._store.count_pending(self.name, _group_or_none(group), _name_or_none(name))

    def cancel_pending(
        self,
        *,
        group: str | ResourceGroup | None = None,
        name: str | None = None,
        batch_size: int = 500,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Cancels every pending task (ready or delayed) of the group and/or task name given
        (of the queue: neither), ``batch_size`` per transaction, each as ``cancel`` would;
        ``progress(n)`` after each batch. Running tasks finish their runs, and tasks enqueued
        after the call began are left alone (it ends under a busy producer). Returns how many
        were cancelled."""
        _checks.integer("batch_size", batch_size, 1, 100_000)
        group_, name_, done = _group_or_none(group), _name_or_none(name), 0
        at: tuple[int, int] | None = None
        while True:
            n, at = self._store.cancel_batch(self.name, group_, name_, at, batch_size)
            done += n
            if progress is not None:
                progress(done)
            if at is None:
                return done

    def purge(
        self,
        status: str | Iterable[str],
        *,
        older_than: float | None = None,
        group: str | ResourceGroup | None = None,
        name: str | None = None,
        batch_size: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Deletes finished tasks of ``status`` (``completed``, ``dead``, ``cancelled``)
        that finished more than ``older_than`` seconds ago (default: all), with their
        results and history, ``batch_size`` per transaction. ``progress(n)`` is called
        after each batch with the number deleted so far. Returns how many."""
        _checks.integer("batch_size", batch_size, 1, 100_000)
        statuses = _statuses(status)
        if not statuses:
            raise InvalidArgument("purge needs at least one status")
        cutoff, group_, name_, total = self._cutoff(older_than), _group_or_none(group), _name_or_none(name), 0
        for s in statuses:
            cursor: tuple[int, int] | None = None
            while True:
                done, _, cursor = self._store.purge_batch(self.name, s, cutoff, group_, name_, cursor, batch_size)
                total += done
                if progress is not None:
                    progress(total)
                if cursor is None:
                    break
        return total

    def retry_dead(
        self,
        *,
        group: str | ResourceGroup | None = None,
        name: str | None = None,
        status: str = "dead",
        batch_size: int = 500,
        progress: Callable[[int], None] | None = None,
    ) -> Requeued:
        """Requeues every dead (or, with ``status="cancelled"``, cancelled) task matching,
        with fresh attempts, ``batch_size`` per transaction; ``progress(n)`` after each
        batch. A task whose unique key an unfinished task now holds stays as it is and is
        listed in ``skipped``."""
        _checks.integer("batch_size", batch_size, 1, 100_000)
        if status not in ("dead", "cancelled"):
            raise InvalidArgument(f'retry_dead takes status "dead" or "cancelled", got {status!r}')
        group_, name_, done, skipped = _group_or_none(group), _name_or_none(name), 0, []
        cursor: tuple[int, int] | None = None
        while True:
            n, held, cursor = self._store.requeue_batch(self.name, status, None, group_, name_, cursor, batch_size)
            done += n
            skipped.extend(held)
            if progress is not None:
                progress(done + len(skipped))
            if cursor is None:
                break
        if done:
            self._notify()
        return Requeued(done, skipped)

    def task_names(self, matching: str) -> builtins.list[str]:
        """Stored task names of this queue equal to ``matching`` or ending in
        ``"." + matching`` (``"charge"`` finds ``"shop.tasks.charge"``), sorted. Reads every
        task of the queue: for operators (the CLI's ``--name``), not hot paths."""
        return self._store.task_names_like(self.name, _checks.text("name", matching))

    def queue_names(self) -> builtins.list[str]:
        """Every queue in this file (with tasks, group settings or a pause)."""
        return self._store.queue_names()

    def _cutoff(self, older_than: float | None) -> int | None:
        seconds = _checks.optional_seconds("older_than", older_than)
        return None if seconds is None else self._store.now_ms() - int(seconds * 1000)


@dataclass(frozen=True)
class Requeued:
    """What ``Queue.retry_dead`` did: how many tasks went back to pending, and which stayed."""

    count: int
    skipped: list[int]


def _statuses(status: str | Iterable[str] | None) -> list[str]:
    if status is None:
        return []
    found = [status] if isinstance(status, str) else list(status)
    for s in found:
        if s not in STATUSES:
            raise InvalidArgument(f"unknown status {s!r}: use one of {', '.join(STATUSES)}")
    return found


def _group_or_none(group: str | ResourceGroup | None) -> str | None:
    return None if group is None else _checks.text("group", group_name(group))


def _name_or_none(name: str | None) -> str | None:
    return _checks.optional_text("name", name)


def _path(path: str | os.PathLike[str]) -> str:
    """The path as the core takes it. A str path must encode to the file system's bytes
    (``os.fsdecode`` output does; a lone surrogate such as ``"\\ud800"`` does not)."""
    path = os.fspath(path)
    try:
        os.fsencode(path)
    except UnicodeEncodeError as e:
        raise DatabasePathError(
            f"database path {path!r} cannot be encoded as a file name: {e.reason} "
            f"({path[e.start]!r} at index {e.start})"
        ) from None
    return path


#: Set by ``ferroq worker`` in its environment, which its child processes inherit: every
#: Queue the process opens uses FERROQ_WORKER_DB instead of the path in the code (the
#: worker's --db), and with FERROQ_WORKER_CREATE=0 (the worker's default) a missing file is
#: refused instead of created. A Queue in any other program is not affected.
WORKER_DB_ENV = "FERROQ_WORKER_DB"
WORKER_CREATE_ENV = "FERROQ_WORKER_CREATE"


def is_database_url(path: str) -> bool:
    """Whether ``path`` names a PostgreSQL database (a URL) rather than a SQLite file."""
    return path.startswith(("postgres://", "postgresql://"))


def _worker_path(path: str) -> str:
    """The path a Queue opens: the code's, or the one ``ferroq worker --db`` gave."""
    override = os.environ.get(WORKER_DB_ENV)
    if override and is_database_url(override):
        return override  # a server: nothing to find on disk, or to create
    if is_database_url(path):
        return path
    if override:
        if os.path.abspath(path) != os.path.abspath(override):
            logging.getLogger("ferroq.cli").warning(
                "opening the queue at %s (--db), not at %s as the code says",
                os.path.abspath(override),
                os.path.abspath(path),
            )
        path = override
    create = os.environ.get(WORKER_CREATE_ENV)
    if create == "1" and not os.path.exists(path):
        logging.getLogger("ferroq.cli").warning(
            "creating a new empty queue database at %s (--create)", os.path.abspath(path)
        )
    if create == "0" and not os.path.exists(path):
        given = "from --db" if override else f"the code opens {path!r}"
        raise DatabasePathError(
            f"no database at {os.path.abspath(path)} ({given}; working directory {os.getcwd()}): "
            "ferroq worker does not create a new empty queue. Run it in the directory the path is "
            "relative to, give the file with --db PATH, or pass --create to start a new queue there"
        )
    return path


def _task_id(value: Any) -> int:
    return _checks.integer("task id", value, -_checks.INT64_MAX - 1, _checks.INT64_MAX)
