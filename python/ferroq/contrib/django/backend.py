"""``FerroqBackend``: Django's task framework (``django.tasks``, or the ``django-tasks``
backport) on a ferroq queue file.

Each Django task is a ferroq task named by its import path (``myapp.tasks.send_email``),
run by one generic processor (``runner.run_task``) that imports the Django task by that
name. A worker that claims a name it has not seen yet imports it then (the queue's
resolver), so a worker needs no list of tasks. Django queue names are ferroq queue names in
the one file.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import threading
from datetime import datetime
from functools import partial
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.module_loading import import_string

from ... import _aio, _core
from ...errors import FerroqError, InvalidArgument, PayloadError, UnknownTask
from ...info import TaskInfo, Transition
from ...policies import Retention, RetryPolicy
from ...queue import Queue
from ...task import TaskBase, TaskHandle, TaskOptions
from . import _compat
from ._compat import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    normalize_json,
    task_enqueued,
)

__all__ = ["FerroqBackend", "FerroqTask"]

#: OPTIONS that open the queue file (see ``ferroq.Queue``).
QUEUE_OPTIONS = ("durability", "busy_timeout", "max_payload", "retention", "events")
#: OPTIONS that are every task's defaults (a ``FerroqTask`` field overrides them per task).
TASK_OPTIONS = ("max_attempts", "retry", "timeout", "resource_group")
#: ``FerroqTask`` fields that ``using()`` may change per enqueue.
EXTRA_FIELDS = ("max_attempts", "timeout", "resource_group", "unique_key")

#: The open queues, by (alias, path, queue name, options): see ``FerroqBackend.queue``.
_queues: dict[tuple[str, str, str, str], Queue] = {}
_queues_lock = threading.Lock()

_STATUS = {
    "pending": TaskResultStatus.READY,
    "running": TaskResultStatus.RUNNING,
    "completed": TaskResultStatus.SUCCESSFUL,
    "dead": TaskResultStatus.FAILED,
    "cancelled": TaskResultStatus.FAILED,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FerroqTask(Task):  # type: ignore[misc]  # (Task is Any to mypy: see _compat)
    """A Django task with ferroq's extras, all optional (None: the backend's OPTIONS):
    ``@task(max_attempts=5, timeout=30, resource_group="smtp")``, and per enqueue
    ``send_email.using(unique_key=f"welcome-{user.pk}").enqueue(...)``.

    ``timeout`` (seconds) is the processor's: set it in the decorator (a worker runs every
    enqueue of a task with the timeout its declaration has)."""

    max_attempts: int | None = None
    timeout: float | None = None
    resource_group: str | None = None
    unique_key: str | None = None

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: datetime | None = None,
        backend: str | None = None,
        **extras: Any,
    ) -> FerroqTask:
        """Django's ``using()``, plus ferroq's ``max_attempts``, ``resource_group`` and
        ``unique_key`` (None leaves a value as it is)."""
        unknown = sorted(set(extras).difference(EXTRA_FIELDS))
        if unknown:
            raise TypeError(
                f"using() got unexpected option(s) {', '.join(map(repr, unknown))}; "
                f"ferroq's are {', '.join(EXTRA_FIELDS)}"
            )
        task: FerroqTask = Task.using(
            self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
        )
        changes = {k: v for k, v in extras.items() if v is not None}
        return dataclasses.replace(task, **changes) if changes else task


class FerroqBackend(BaseTaskBackend):  # type: ignore[misc]
    """``TASKS = {"default": {"BACKEND": "ferroq.contrib.django.FerroqBackend",
    "OPTIONS": {"path": BASE_DIR / "tasks.db"}}}``. OPTIONS: ``path`` (required), the
    queue's ``durability``, ``busy_timeout``, ``max_payload``, ``retention``, ``events``, and
    the tasks' defaults ``max_attempts`` (3), ``retry`` (a ``ferroq.RetryPolicy``),
    ``timeout``, ``resource_group``."""

    task_class = FerroqTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = dict(self.options)
        where = f'TASKS["{alias}"]["OPTIONS"]'
        unknown = sorted(set(options).difference(("path", *QUEUE_OPTIONS, *TASK_OPTIONS)))
        if unknown:
            raise ImproperlyConfigured(
                f"{where} has unknown option(s) {', '.join(map(repr, unknown))}; ferroq's "
                f"are path, {', '.join(QUEUE_OPTIONS + TASK_OPTIONS)}"
            )
        if not options.get("path"):
            raise ImproperlyConfigured(f'{where} needs "path": the queue\'s SQLite file (e.g. BASE_DIR / "tasks.db")')
        self.path = os.path.abspath(os.fspath(options["path"]))
        self._queue_options = {k: options[k] for k in QUEUE_OPTIONS if k in options}
        if not isinstance(self._queue_options.get("retention", Retention()), Retention):
            raise ImproperlyConfigured(f"{where}['retention'] must be a ferroq.Retention")
        if not isinstance(options.get("retry", RetryPolicy()), RetryPolicy):
            raise ImproperlyConfigured(f"{where}['retry'] must be a ferroq.RetryPolicy")
        try:
            self.defaults = TaskOptions(**{k: options[k] for k in TASK_OPTIONS if k in options})
        except InvalidArgument as e:
            raise ImproperlyConfigured(f"{where}: {e}") from None

    # -- the queue file ------------------------------------------------------------------

    def queue(self, name: str = "default") -> Queue:
        """The ferroq queue behind the Django queue ``name`` (opened, and the file created,
        on first use). Django makes a backend per thread; they share one Queue per queue
        (and so its connections, and the processors a worker registered)."""
        key = (self.alias, self.path, name, repr(sorted(self._queue_options.items())))
        with _queues_lock:
            q = _queues.get(key)
            if q is None:
                q = _queues[key] = Queue(self.path, name=name, **self._queue_options)
                q._resolve = partial(self._resolve, q)
            return q

    def serves(self, queue_name: str) -> bool:
        """Whether ``queue_name`` is one of this backend's QUEUES (any, if QUEUES is empty)."""
        return not self.queues or queue_name in self.queues

    def _queues_to_search(self) -> list[str]:
        """The queues a result may be in: QUEUES, or (QUEUES empty) every queue in the file."""
        if self.queues:
            return sorted(self.queues)
        return self.queue("default").queue_names() or ["default"]

    def close(self) -> None:
        """Closes the queue file's connections (any later call reopens them)."""
        with _queues_lock:
            for (alias, path, _name, _options), q in _queues.items():
                if (alias, path) == (self.alias, self.path):
                    q.close()

    # -- validation ----------------------------------------------------------------------

    def validate_task(self, task: Any) -> None:
        super().validate_task(task)
        try:
            _core.check_name("queue", task.queue_name)
            self.options_for(task)
        except InvalidArgument as e:
            raise InvalidTask(f"task {task.module_path}: {e}") from None

    def options_for(self, task: Any) -> TaskOptions:
        """The ferroq options of ``task``: its own extras over the backend's defaults."""
        extras = {k: getattr(task, k, None) for k in EXTRA_FIELDS}
        changes = {k: v for k, v in extras.items() if v is not None and k != "unique_key"}
        return self.defaults._with(changes) if changes else self.defaults

    # -- enqueueing ----------------------------------------------------------------------

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        self.validate_task(task)
        bound, args, kwargs = self._prepare(task, args, kwargs)
        handle = bound.enqueue(*args, **kwargs)
        if not handle.created:  # its unique key matched an unfinished task: that one's result
            return self.get_result(str(handle.id))
        result = self._enqueued(task, handle, args, kwargs)
        task_enqueued.send(type(self), task_result=result)
        return result

    async def aenqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """``enqueue`` without blocking the event loop: concurrent ``aenqueue`` calls share
        commits (ferroq's ``aenqueue``)."""
        self.validate_task(task)
        bound, args, kwargs = self._prepare(task, args, kwargs)
        handle = await bound.aenqueue(*args, **kwargs)
        if not handle.created:
            return await self.aget_result(str(handle.id))
        result = self._enqueued(task, handle, args, kwargs)
        if hasattr(task_enqueued, "asend"):  # Django 5.0 and later
            await task_enqueued.asend(type(self), task_result=result)
        else:
            await _aio.run(partial(task_enqueued.send, type(self), task_result=result))
        return result

    def _prepare(self, task: Any, args: Any, kwargs: Any) -> tuple[Any, list[Any], dict[str, Any]]:
        """The ferroq call for ``task(*args, **kwargs)``: arguments checked against the
        function and normalised as Django stores them (tuples as lists ...)."""
        try:
            args, kwargs = normalize_json(list(args)), normalize_json(dict(kwargs))
        except (TypeError, ValueError) as e:
            raise PayloadError(f"arguments of task {task.module_path} must be JSON values: {e}") from None
        given = ([None] if task.takes_context else []) + args
        try:
            inspect.signature(task.func).bind(*given, **kwargs)
        except TypeError as e:
            raise InvalidArgument(f"bad arguments for task {task.module_path}: {e}") from None
        processor = self.processor(self.queue(task.queue_name), task)
        per_call: dict[str, Any] = {"priority": task.priority, "run_at": task.run_after}
        for key in ("max_attempts", "resource_group", "unique_key"):
            per_call[key] = getattr(task, key, None)
        return processor.using(**per_call), args, kwargs

    def _enqueued(self, task: Any, handle: TaskHandle[Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
        return TaskResult(
            task=task,
            id=str(handle.id),
            status=TaskResultStatus.READY,
            enqueued_at=timezone.now(),
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )

    def processor(self, q: Queue, task: Any) -> TaskBase[Any, Any]:
        """The ferroq task that runs ``task`` on queue ``q``, registered on first use."""
        name = task.module_path
        found = q._tasks.get(name)
        if found is not None:
            return found
        from .runner import run_task

        options = self.options_for(task)
        registered: TaskBase[Any, Any] = q.task(
            name=name,
            max_attempts=options.max_attempts,
            retry=options.retry,
            timeout=options.timeout,
            resource_group=options.resource_group,
        )(run_task)
        return registered

    def _resolve(self, q: Queue, name: str) -> None:
        """A worker claimed ``name`` and has no processor for it: if it is the import path of
        a Django task on this backend, register it (else the worker gives the task back)."""
        task = django_task(name)
        if task is not None and task.backend == self.alias:
            self.processor(q, task)

    # -- results -------------------------------------------------------------------------

    def get_result(self, result_id: str) -> Any:
        task_id = _task_id(result_id)
        if not os.path.exists(self.path):
            raise TaskResultDoesNotExist(result_id)
        for name in self._queues_to_search():
            q = self.queue(name)
            try:
                info = q.get(task_id)
            except UnknownTask:
                continue
            return self._result(q, info, q.history(task_id))
        raise TaskResultDoesNotExist(result_id)

    async def aget_result(self, result_id: str) -> Any:
        """``get_result`` off the event loop."""
        return await _aio.run(self.get_result, result_id)

    def _result(self, q: Queue, info: TaskInfo, history: list[Transition]) -> Any:
        task = django_task(info.name)
        if task is None:
            raise TaskResultDoesNotExist(f"{info.id} (task {info.name!r} is not a Django task)")
        priority = max(-100, min(100, info.priority))  # Django's range; aging may have raised it
        if task.priority != priority or task.queue_name != q.name:
            task = Task.using(task, priority=priority, queue_name=q.name)
        try:
            args, kwargs = info.args, info.kwargs
        except FerroqError as e:
            raise TaskResultDoesNotExist(f"{info.id} cannot be read: {e}") from None
        starts = [t for t in history if t.to_status == "running"]
        errors = [
            TaskError(
                exception_class_path=_class_path(t.error.type),
                traceback=t.error.traceback or f"{t.error.type}: {t.error.message}",
            )
            for t in history
            if t.error is not None
        ]
        if info.status == "cancelled":
            errors.append(
                TaskError(
                    exception_class_path="ferroq.errors.TaskCancelled",
                    traceback=f"ferroq.errors.TaskCancelled: task {info.id} was cancelled",
                )
            )
        status = _STATUS[info.status]
        finished = status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
        result = TaskResult(
            task=task,
            id=str(info.id),
            status=status,
            enqueued_at=_when(info.created_at),
            started_at=_when(starts[0].at) if starts else None,
            finished_at=_when(info.finished_at) if finished else None,
            last_attempted_at=_when(starts[-1].at) if starts else None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=errors,
            worker_ids=[t.worker or "" for t in starts],
        )
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", info.result)
        return result


def django_task(path: str) -> Any:
    """The Django task at import path ``path``, or None if there is none."""
    try:
        found = import_string(path)
    except ImportError:
        return None
    return found if isinstance(found, _compat.Task) else None


def _task_id(result_id: Any) -> int:
    text = str(result_id)
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise TaskResultDoesNotExist(f"{result_id!r} (ferroq result ids are whole numbers)")
    return int(text)


def _class_path(type_name: str) -> str:
    """An exception's import path as Django stores it (ferroq stores builtins by bare name)."""
    return type_name if "." in type_name else f"builtins.{type_name}"


def _when(at: datetime | None) -> datetime | None:
    """A stored time as Django gives times: aware in UTC, or naive local with USE_TZ=False."""
    if at is None or settings.USE_TZ:
        return at
    naive: datetime = timezone.make_naive(at)
    return naive
