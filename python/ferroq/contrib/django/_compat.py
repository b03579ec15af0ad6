"""Django's task framework, wherever it lives: ``django.tasks`` (Django 6 and later) when
present, else the ``django-tasks`` backport (``django_tasks``, Django 4.2 to 5.2). They have
the same interface; only the name of the invalid-task exception differs.

Imported by name, so that type checking reads the same with either installed (each name
is ``Any``)."""

from __future__ import annotations

import importlib
from typing import Any


def _modules() -> tuple[str, dict[str, Any]]:
    try:
        importlib.import_module("django.tasks")
        root = "django.tasks"
    except ImportError:  # Django before 6: the backport
        root = "django_tasks"
    package = importlib.import_module(root)
    base = importlib.import_module(f"{root}.base")
    exceptions = importlib.import_module(f"{root}.exceptions")
    signals = importlib.import_module(f"{root}.signals")
    if root == "django.tasks":
        normalize = importlib.import_module("django.utils.json").normalize_json
    else:
        normalize = importlib.import_module("django_tasks.utils").normalize_json
    return root, {
        "Task": base.Task,
        "TaskContext": base.TaskContext,
        "TaskError": base.TaskError,
        "TaskResult": base.TaskResult,
        "TaskResultStatus": base.TaskResultStatus,
        "task_backends": package.task_backends,
        "BaseTaskBackend": importlib.import_module(f"{root}.backends.base").BaseTaskBackend,
        "InvalidTask": getattr(exceptions, "InvalidTask", None) or exceptions.InvalidTaskError,
        "TaskResultDoesNotExist": exceptions.TaskResultDoesNotExist,
        "task_enqueued": signals.task_enqueued,
        "task_started": signals.task_started,
        "task_finished": signals.task_finished,
        "normalize_json": normalize,
    }


#: "django.tasks" or "django_tasks": where the framework was found.
FRAMEWORK, _found = _modules()

Task: Any = _found["Task"]
TaskContext: Any = _found["TaskContext"]
TaskError: Any = _found["TaskError"]
TaskResult: Any = _found["TaskResult"]
TaskResultStatus: Any = _found["TaskResultStatus"]
task_backends: Any = _found["task_backends"]
BaseTaskBackend: Any = _found["BaseTaskBackend"]
InvalidTask: Any = _found["InvalidTask"]
TaskResultDoesNotExist: Any = _found["TaskResultDoesNotExist"]
task_enqueued: Any = _found["task_enqueued"]
task_started: Any = _found["task_started"]
task_finished: Any = _found["task_finished"]
#: Django's normalisation of arguments and return values to JSON types (tuples to lists,
#: bytes to text); raises TypeError or ValueError for anything else.
normalize_json: Any = _found["normalize_json"]
