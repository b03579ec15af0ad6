"""Task declarations: the object ``@queue.task`` returns, calls ready to enqueue, handles."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import time
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Collection, Coroutine, Generic, ParamSpec, TypeVar

from . import _aio, _checks, _core
from ._core import NewTask
from .errors import InvalidArgument, ResultTimeout, TaskCancelled, TaskFailed, TaskNotImportable
from .groups import ResourceGroup, group_name
from .info import TaskInfo
from .policies import Cache, RetryPolicy
from .tracing import publish_span as _publish_span
from .tracing import traceparent as _traceparent

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["Task", "AsyncTask", "BatchTask", "TaskBase", "TaskOptions", "TaskCall", "TaskHandle", "BoundTask"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class TaskOptions:
    """How a task is enqueued and run. Set at declaration, overridable with ``.using()``."""

    priority: int = 0
    resource_group: str = "default"
    max_attempts: int = 3
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = None
    delay: float | None = None
    run_at: datetime | float | None = None
    unique_key: str | None = None
    cache: Cache | None = None

    def __post_init__(self) -> None:
        self._check(_OPTION_NAMES)

    def _check(self, names: Collection[str]) -> None:
        """Checks the options named (all at construction; only the changed ones in ``_with``)."""
        if "priority" in names:
            _checks.integer("priority", self.priority, _core.PRIORITY_MIN, _core.PRIORITY_MAX)
        if "resource_group" in names:
            _core.check_name("resource group", _checks.text("resource_group", self.resource_group))
        if "max_attempts" in names:
            _checks.integer("max_attempts", self.max_attempts, 1, _checks.INT64_MAX)
            _core.check_max_attempts(self.max_attempts)
        if "retry" in names and not isinstance(self.retry, RetryPolicy):
            raise InvalidArgument(f"retry must be a ferroq.RetryPolicy, got {self.retry!r}")
        if "timeout" in names:
            _checks.optional_seconds("timeout", self.timeout, positive=True)
        if "delay" in names or "run_at" in names:
            _checks.optional_seconds("delay", self.delay)
            if self.delay is not None and self.run_at is not None:
                raise InvalidArgument("give either delay or run_at, not both")
            if self.run_at is not None:
                epoch = self.run_at.timestamp() if isinstance(self.run_at, datetime) else self.run_at
                if isinstance(epoch, bool) or not isinstance(epoch, (int, float)):
                    raise InvalidArgument(f"run_at must be a datetime or epoch seconds, got {self.run_at!r}")
                if not (math.isfinite(epoch) and 0 <= epoch <= _checks.SECONDS_MAX * 2):
                    raise InvalidArgument(f"run_at must be a finite time between 1970 and 2170, got {self.run_at!r}")
        if "unique_key" in names and self.unique_key is not None:
            _checks.text("unique_key", self.unique_key)
        if "cache" in names and self.cache is not None and not isinstance(self.cache, Cache):
            raise InvalidArgument(f"cache must be a ferroq.Cache, got {self.cache!r}")

    def _with(self, changes: dict[str, Any]) -> TaskOptions:
        """A copy with ``changes``, checking only those: ``using()`` is often called once per
        enqueue (a unique key each time), and checking every option made it 4x the cost of
        the call itself."""
        copy = object.__new__(TaskOptions)
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(changes)  # frozen: the dict, not setattr
        copy._check(changes)
        return copy

    def core_options(self) -> tuple[str, int, int | None, int, str | None, int | None]:
        """(resource_group, priority, run_at_ms, max_attempts, unique_key, cache_ttl_ms) as the
        core takes them; run_at_ms is computed now."""
        cache_ttl = None if self.cache is None else self.cache.ttl_ms
        return (self.resource_group, self.priority, self.run_at_ms(), self.max_attempts, self.unique_key, cache_ttl)

    def run_at_ms(self) -> int | None:
        """When the task may first run, in epoch ms; None for now."""
        if self.delay is not None:
            return int((time.time() + self.delay) * 1000)
        if isinstance(self.run_at, datetime):
            return int(self.run_at.timestamp() * 1000)
        if self.run_at is not None:
            return int(self.run_at * 1000)
        return None


_OPTION_NAMES = frozenset(f.name for f in fields(TaskOptions))


class TaskCall(Generic[R]):
    """One invocation, encoded and ready to enqueue (see ``Queue.enqueue_many``)."""

    __slots__ = ("name", "payload", "options")

    def __init__(self, name: str, payload: bytes, options: TaskOptions) -> None:
        self.name = name
        self.payload = payload
        self.options = options

    def __repr__(self) -> str:
        return f"TaskCall({self.name!r}, payload={self.payload!r})"

    def core_task(self) -> NewTask:
        """The call as the store inserts it (its options read now: a delay counts from here)."""
        group, priority, run_at, max_attempts, unique_key, cache_ttl = self.options.core_options()
        return NewTask(self.name, group, self.payload, priority, run_at, max_attempts, unique_key, cache_ttl)


class _EncodedCall(TaskCall[R]):
    """A call ``task.call(...)`` made: its payload came from the queue's serializer, so
    ``enqueue_many`` stores it unchecked (a hand-built ``TaskCall``'s is decoded first)."""

    __slots__ = ()


class TaskHandle(Generic[R]):
    """A reference to an enqueued task."""

    __slots__ = ("id", "queue", "created")

    def __init__(self, queue: Queue, task_id: int, created: bool = True) -> None:
        self.queue = queue
        self.id = task_id
        #: False when a unique key matched an unfinished task, whose id this is.
        self.created = created

    def __repr__(self) -> str:
        return f"TaskHandle(id={self.id}, queue={self.queue.name!r})"

    def info(self) -> TaskInfo:
        """The task as stored now."""
        return self.queue.get(self.id)

    def status(self) -> str:
        return self.info().status

    def cancel(self) -> None:
        self.queue.cancel(self.id)

    def result(self, timeout: float | None = None) -> R:
        """Waits for the task to finish and returns its result.

        Raises ``TaskFailed`` (with the stored error) if it went dead, ``TaskCancelled`` if it
        was cancelled, ``ResultTimeout`` if ``timeout`` seconds pass first.
        """
        # NaN compared false to every deadline, so result(timeout=nan) waited forever.
        seconds = _checks.optional_seconds("timeout", timeout)
        deadline = None if seconds is None else time.monotonic() + seconds
        store = self.queue._store
        while True:
            token = store.change_token()
            info = self.queue.get(self.id)
            if info.status in _FINISHED:
                return self._answer(info)
            pause = 1.0  # a commit anywhere wakes us sooner
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ResultTimeout(f"task {self.id} is still {info.status} after {timeout}s")
                pause = min(pause, left)
            store.wait_for_change(token, pause)

    def _answer(self, info: TaskInfo) -> R:
        """What ``result()`` gives for a finished task: its result, or the error it ended with."""
        if info.status == "dead":
            raise TaskFailed(self.id, info.last_error)
        if info.status == "cancelled":
            raise TaskCancelled(f"task {self.id} was cancelled")
        return info.result  # type: ignore[no-any-return]

    async def ainfo(self) -> TaskInfo:
        """``info()`` for asyncio code: the read runs off the event loop."""
        return await self.queue.aget(self.id)

    async def aresult(self, timeout: float | None = None) -> R:
        """``result()`` for asyncio code: waits without blocking the event loop, woken by the
        store's change notifications (commits by any process), not by polling. Raises as
        ``result()`` does; cancelling the await stops the wait."""
        seconds = _checks.optional_seconds("timeout", timeout)
        deadline = None if seconds is None else time.monotonic() + seconds
        watcher = _aio.watcher(self.queue)
        while True:
            waiter = watcher.register()  # before the read: a commit after it wakes us
            try:
                info = await self.queue.aget(self.id)
                if info.status in _FINISHED:
                    return self._answer(info)
                pause = _aio.RECHECK
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ResultTimeout(f"task {self.id} is still {info.status} after {timeout}s")
                    pause = min(pause, left)
                await watcher.wait(waiter, pause)
            finally:
                watcher.unregister(waiter)


#: Statuses a task does not leave by itself: ``result()`` answers once one is reached.
_FINISHED = frozenset(("completed", "dead", "cancelled"))


class _ArgCheck:
    """Checks call arguments against a signature. ``Signature.bind`` costs microseconds per
    call, so plain signatures (positional-or-keyword parameters only) get a fast check, and
    bind runs only to explain a failure or for other signatures."""

    __slots__ = ("signature", "simple", "index", "total", "required", "positional")

    def __init__(self, signature: inspect.Signature) -> None:
        self.signature = signature
        params = list(signature.parameters.values())
        self.simple = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
        self.index = {p.name: i for i, p in enumerate(params)}
        self.total = len(params)
        self.required = [p.name for p in params if p.default is inspect.Parameter.empty]
        #: Numbers of positional arguments that fit without keywords (``call`` tests this
        #: inline: a method call per task is a measurable share of ``enqueue_many``).
        self.positional = range(len(self.required), self.total + 1) if self.simple else range(0)

    def fits(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        n = len(args)
        if not self.simple or n > self.total:
            return False
        if not kwargs:
            return n >= len(self.required)
        for key in kwargs:
            i = self.index.get(key)
            if i is None or i < n:  # unknown, or also given positionally
                return False
        return all(name in kwargs for name in self.required[n:])

    def check(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.fits(args, kwargs):
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise InvalidArgument(f"bad arguments for task {name!r}: {e}") from None


class _Enqueuer(Generic[P, R]):
    """What ``Task`` and ``BoundTask`` share: encoding calls and enqueueing them."""

    queue: Queue
    name: str
    options: TaskOptions
    signature: inspect.Signature
    _args: _ArgCheck

    def call(self, *args: P.args, **kwargs: P.kwargs) -> TaskCall[R]:
        """Encodes an invocation without enqueueing it (for ``Queue.enqueue_many``)."""
        # The usual case inline (no fits() call, no encoding helper): each Python call saved
        # is ~5% of a task's cost in a large enqueue_many.
        if kwargs or len(args) not in self._args.positional:
            self._args.check(self.name, args, kwargs)
        envelope = {"args": args, "kwargs": kwargs}
        options = self.options
        if self.queue._router is not None:
            options = self._routed(options, envelope, args, kwargs)
        if _traceparent is not None:  # OpenTelemetry installed: the active span's context rides along
            trace = _traceparent()
            if trace is not None:
                envelope["trace"] = trace
        try:
            payload = self.queue.serializer.dumps(envelope)
        except InvalidArgument as e:
            raise type(e)(f"payload of task {self.name!r} is {e}") from None
        if options.cache is None:
            return _EncodedCall(self.name, payload, options)
        key = self._cache_key(options.cache, args, kwargs)
        return _EncodedCall(self.name, payload, options._with({"unique_key": key}))

    def _routed(
        self, options: TaskOptions, envelope: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> TaskOptions:
        """The options with the group the queue's routes pick; the reason goes in the
        envelope (``TaskInfo.route``)."""
        router = self.queue._router
        assert router is not None
        try:
            picked = router.pick(self.name, options.resource_group, args, kwargs)
        except Exception as e:  # a user predicate: whatever it raises
            raise InvalidArgument(f"a route's predicate failed on task {self.name!r}: {e!r}") from e
        if picked is None:
            return options
        envelope["route"] = picked[1]
        return options._with({"resource_group": picked[0]})

    def _cache_key(self, cache: Cache, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The unique key of a cached call: the task's name and a digest of its arguments
        bound to its parameters, defaults applied, as the serializer encodes them (not the
        payload: a trace context rides in that), or of ``cache.key(*args, **kwargs)``."""
        if cache.key is None:
            bound = self.signature.bind(*args, **kwargs)  # f(1) and f(x=1) are one call
            bound.apply_defaults()
            material = self.queue.serializer.dumps({"args": (), "kwargs": dict(bound.arguments)})
        else:
            custom = cache.key(*args, **kwargs)
            if not isinstance(custom, str):
                raise InvalidArgument(f"the cache key function of task {self.name!r} must return a str, got {custom!r}")
            material = _checks.text("cache key", custom).encode()
        return f"cache:{self.name}:{hashlib.sha256(material).hexdigest()}"

    def cache_clear(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Ends the cached result of this call (every cached result of the task when called
        without arguments), in every process: the next identical enqueue runs again. Returns
        how many entries ended; the completed runs stay as history."""
        cache = self.options.cache
        if cache is None:
            raise InvalidArgument(f"task {self.name!r} has no cache (declare it with cache=ferroq.Cache(...))")
        if not args and not kwargs:
            return int(self.queue._store.clear_cache(self.queue.name, self.name))
        self._args.check(self.name, args, kwargs)
        key = self._cache_key(cache, args, kwargs)
        return int(self.queue._store.clear_cache(self.queue.name, self.name, key))

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """Stores one run of this task; durable when it returns."""
        if _publish_span is None:
            return self.queue._enqueue_one(self.call(*args, **kwargs))
        with _publish_span(self.queue.name, self.name) as span:
            handle = self.queue._enqueue_one(self.call(*args, **kwargs))
            if span is not None:
                span.set_attribute("messaging.message.id", str(handle.id))
            return handle

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R]:
        """``enqueue`` for asyncio code: the commit runs off the event loop, and concurrent
        ``aenqueue`` calls share fsyncs (group commit). Durable when the await returns."""
        return await self.queue._aenqueue_one(self.call(*args, **kwargs))


class BoundTask(_Enqueuer[P, R]):
    """A task with per-call options (from ``Task.using``)."""

    def __init__(self, task: TaskBase[P, R], options: TaskOptions) -> None:
        self.queue = task.queue
        self.name = task.name
        self.signature = task.signature
        self._args = task._args
        self.options = options

    def using(self, **overrides: Any) -> BoundTask[P, R]:
        return BoundTask(_task_of(self), _override(self.options, overrides))


def _task_of(bound: BoundTask[P, R]) -> TaskBase[P, R]:
    return bound.queue._tasks[bound.name]


#: What ``using()`` may change (timeout and retry belong to the processor, set at declaration).
USING_OPTIONS = ("delay", "max_attempts", "priority", "resource_group", "run_at", "unique_key")


def _override(options: TaskOptions, overrides: dict[str, Any]) -> TaskOptions:
    unknown = sorted(set(overrides).difference(USING_OPTIONS))
    if unknown:
        raise InvalidArgument(
            f"unknown option{'s' if len(unknown) > 1 else ''} for using(): "
            f"{', '.join(map(repr, unknown))}; the options are {', '.join(USING_OPTIONS)}"
        )
    if "unique_key" in overrides and options.cache is not None:
        raise InvalidArgument("a cached task's unique key is its cache key: give Cache(key=...) instead")
    if "resource_group" in overrides:
        overrides["resource_group"] = group_name(overrides["resource_group"])
    if "delay" in overrides:
        overrides.setdefault("run_at", None)
    elif "run_at" in overrides:
        overrides.setdefault("delay", None)
    return options._with(overrides)


class TaskBase(_Enqueuer[P, R]):
    """A processor registered on a queue; ``R`` is the type of its stored result."""

    fn: Callable[P, Any]

    def __init__(self, queue: Queue, fn: Callable[P, Any], name: str, options: TaskOptions) -> None:
        self.queue = queue
        self.fn = fn
        self.name = name
        self.options = options
        self.signature = inspect.signature(fn)
        self._args = _ArgCheck(self.signature)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__qualname__ = getattr(fn, "__qualname__", name)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"Task({self.name!r}, queue={self.queue.name!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles by reference (module + qualified name), as functions do: the other process
        imports the module and finds the same task there. Raises ``TaskNotImportable`` for a
        task that cannot be found that way (a lambda, a nested function)."""
        if by_reference(self.__module__, self.__qualname__, self.name) is not self:
            raise TaskNotImportable(
                f"task {self.name!r} cannot be pickled by reference: "
                f"{self.__module__}.{self.__qualname__} is a different object"
            )
        return (_unpickle_task, (self.__module__, self.__qualname__, self.name))

    if TYPE_CHECKING:  # what type checkers see; at run time any keyword reaches _override

        def using(
            self,
            *,
            priority: int | None = None,
            delay: float | None = None,
            run_at: datetime | float | None = None,
            unique_key: str | None = None,
            resource_group: str | ResourceGroup | None = None,
            max_attempts: int | None = None,
        ) -> BoundTask[P, R]: ...
    else:

        def using(self, **options):
            """This task with options for the next enqueue: priority, delay (seconds) or run_at,
            unique_key, resource_group, max_attempts (None: as declared). An unknown option is
            an ``InvalidArgument`` listing them, as from ``BoundTask.using``."""
            given = {k: v for k, v in options.items() if v is not None}
            return BoundTask(self, _override(self.options, given))


_IMPORTABLE_HINT = (
    "a process-pool worker's child process imports each processor by its module and qualified name, "
    "so define it at the top level of a module (not as a lambda or a nested function); in a script, "
    'define tasks outside the `if __name__ == "__main__":` block that starts the worker'
)


def by_reference(module: str, qualname: str, name: str) -> Any:
    """The object at ``module.qualname`` in this process: how a task is found again in a
    child process. Raises ``TaskNotImportable`` with the reason when there is none."""
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise TaskNotImportable(f"task {name!r} ({module}.{qualname}) cannot be found by reference: {_IMPORTABLE_HINT}")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception as e:  # noqa: BLE001 - ImportError, AttributeError, or whatever the import raised
        where = " (the script, re-imported in the child without its __main__ block)" if module == "__main__" else ""
        raise TaskNotImportable(
            f"task {name!r} cannot be found by reference as {module}.{qualname}{where}: "
            f"{type(e).__name__}: {e}; {_IMPORTABLE_HINT}"
        ) from None
    return obj


def _unpickle_task(module: str, qualname: str, name: str) -> TaskBase[Any, Any]:
    obj = by_reference(module, qualname, name)
    if not isinstance(obj, TaskBase) or obj.name != name:
        raise TaskNotImportable(f"task {name!r}: {module}.{qualname} is {obj!r}, not that task")
    return obj


class Task(TaskBase[P, R]):
    """A sync processor. Calling it runs the function inline; ``enqueue`` stores a run."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]


class AsyncTask(TaskBase[P, R]):
    """An ``async def`` processor. Calling it returns the coroutine, as the function would;
    its handles' ``result()`` is the awaited value."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]


T = TypeVar("T")


class BatchTask(TaskBase[[T], R]):
    """A batch processor: each task carries one item; the worker hands the function a list
    of up to ``max_size`` items of the same resource group, waiting at most ``max_wait``
    seconds to fill it. The function returns one result per item, in order; an exception
    instance in that list fails only its own item (a raised exception fails them all)."""

    def __init__(
        self,
        queue: Queue,
        fn: Callable[[list[T]], Any],
        name: str,
        options: TaskOptions,
        max_size: int,
        max_wait: float,
    ) -> None:
        super().__init__(queue, fn, name, options)  # type: ignore[arg-type]
        self.batch_fn = fn
        if self.is_async:
            raise InvalidArgument(f"batch task {name!r}: async batch processors are not supported yet")
        self.max_size = max_size
        self.max_wait = max_wait
        # What is enqueued is one item, whatever the function's own signature.
        self.signature = inspect.Signature([inspect.Parameter("item", inspect.Parameter.POSITIONAL_OR_KEYWORD)])
        self._args = _ArgCheck(self.signature)

    def __call__(self, items: list[T]) -> list[R | BaseException]:
        """Runs the batch function inline."""
        return self.batch_fn(items)  # type: ignore[no-any-return]
