"""What a ferroq worker runs for a Django task: the one processor every Django task is
registered with, and the per-run hooks ``manage.py ferroq_worker`` installs. Module-level
functions: a process-pool worker's children import them by reference."""

from __future__ import annotations

import logging
from typing import Any

from ...context import TaskContext, current_task
from ...errors import Fail
from ...tracebacks import format_traceback
from ...worker import RunOutcome

log = logging.getLogger("ferroq.contrib.django")

__all__ = ["after_run", "before_run", "run_task"]


def setup_django() -> None:
    """``django.setup()`` unless done: a process-pool worker's child is a fresh interpreter
    (it inherits DJANGO_SETTINGS_MODULE and sys.path from the worker)."""
    from django.apps import apps

    if not apps.ready:
        import django

        django.setup()


def before_run(ctx: TaskContext) -> None:
    """Before each run: Django set up, and connections the database dropped (or older than
    CONN_MAX_AGE) closed, as Django does before each request."""
    setup_django()
    from django.db import close_old_connections

    close_old_connections()


def after_run(ctx: TaskContext, outcome: RunOutcome) -> None:
    """After each run, as Django does after each request."""
    from django.db import close_old_connections

    close_old_connections()


def run_task(*args: Any, **kwargs: Any) -> Any:
    """Runs the Django task named by the ferroq task's name (its import path), sending
    ``task_started`` and ``task_finished`` around it. An ``async def`` task runs here
    through asgiref's ``async_to_sync`` (as Django's own ImmediateBackend runs it)."""
    setup_django()
    from django.utils import timezone

    from ._compat import TaskContext as DjangoContext
    from ._compat import TaskError, TaskResultStatus, normalize_json, task_started
    from .backend import FerroqBackend, django_task

    ctx = current_task()
    task = django_task(ctx.name)
    if task is None:  # the enqueuing code had it; this worker's code does not
        raise Fail(f"{ctx.name!r} is not a Django task in this worker's code (cannot be imported)")
    backend = task.get_backend()
    if not isinstance(backend, FerroqBackend):
        raise Fail(f"Django task {ctx.name} is on backend {task.backend!r}, which is not a FerroqBackend here")
    result = backend.get_result(str(ctx.id))  # RUNNING, with earlier attempts' errors and workers
    task = result.task
    sender = type(backend)
    task_started.send(sender=sender, task_result=result)
    try:
        if task.takes_context:
            value = task.call(DjangoContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        value = normalize_json(value)
    except BaseException as exc:
        object.__setattr__(result, "finished_at", timezone.now())
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
        result.errors.append(
            TaskError(
                exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}", traceback=format_traceback(exc)
            )
        )
        _finished(sender, result)
        raise
    object.__setattr__(result, "finished_at", timezone.now())
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(result, "_return_value", value)
    _finished(sender, result)
    return value


def _finished(sender: type, result: Any) -> None:
    """``task_finished``: a receiver that raises is logged and does not change the run's
    outcome (a finished payment must not be retried because a logging receiver failed)."""
    from ._compat import task_finished

    for receiver, error in task_finished.send_robust(sender=sender, task_result=result):
        if isinstance(error, Exception):
            log.error("task_finished receiver %r failed for task %s", receiver, result.id, exc_info=error)
