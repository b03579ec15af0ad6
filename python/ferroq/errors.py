"""The ferroq exception tree, and the signals a processor raises to steer its own fate.

Everything ferroq raises derives from :class:`FerroqError`. The Rust core raises the
same classes (it imports them from here), so there is one tree for both layers.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FerroqError",
    "InvalidArgument",
    "PayloadError",
    "PayloadTooLarge",
    "UnknownTask",
    "UnknownTaskName",
    "InvalidTransition",
    "LeaseLost",
    "TaskFailed",
    "TaskCancelled",
    "ResultTimeout",
    "DrainTimeout",
    "StorageError",
    "DatabasePathError",
    "CorruptDatabase",
    "CorruptTask",
    "ForeignDatabase",
    "DiskFull",
    "SchemaTooNew",
    "TaskNotImportable",
    "ProcessCrashed",
    "Retry",
    "Fail",
]


class FerroqError(Exception):
    """Base of every error ferroq raises."""


class InvalidArgument(FerroqError, ValueError):
    """An argument is out of range or malformed (a name, a priority, a delay...)."""


class PayloadError(InvalidArgument):
    """A payload or result cannot be stored: not serializable, or too large."""


class PayloadTooLarge(PayloadError):
    """A payload or result is over the queue's ``max_payload`` limit."""


class UnknownTask(FerroqError, KeyError):
    """No task with this id exists in this queue."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownTaskName(UnknownTask):
    """No processor is registered under this task name."""


class InvalidTransition(FerroqError, ValueError):
    """The action does not apply in the current state (e.g. cancelling a running task, or
    forgetting a group that still has unfinished tasks)."""


class LeaseLost(FerroqError):
    """The worker's lease on a task expired or was taken over; its late changes are refused."""


class TaskFailed(FerroqError):
    """The task is dead: it failed fatally or ran out of attempts.

    ``error`` holds the stored error (type, message, traceback) of its last run.
    """

    def __init__(self, task_id: int, error: Any) -> None:
        self.task_id = task_id
        self.error = error
        detail = f"{error.type}: {error.message}" if error is not None else "no error recorded"
        super().__init__(f"task {task_id} failed: {detail}")


class TaskCancelled(FerroqError):
    """The task was cancelled before it ran, so it has no result."""


class ResultTimeout(FerroqError, TimeoutError):
    """``TaskHandle.result(timeout=...)`` gave up before the task finished."""


class DrainTimeout(FerroqError, TimeoutError):
    """``ferroq.testing.drain(timeout=...)`` gave up before the queue was empty."""


class StorageError(FerroqError):
    """The database failed (I/O error, a lock held past the busy timeout, ...)."""


class DatabasePathError(StorageError):
    """The database file cannot be created or opened at that path."""


class CorruptDatabase(StorageError):
    """The file is not a SQLite database or is damaged; ferroq left it untouched."""


class CorruptTask(StorageError):
    """A stored task cannot be read: a column holds a value of the wrong type (a row edited
    by hand outside ferroq), or its payload or result is not what the queue's serializer
    can decode.

    ``task_id``, ``column`` (e.g. ``"payload"``) and ``raw`` (the stored bytes) say which
    and what. A claim sets such a task aside (dead, with this error stored); ``Queue.get``
    raises it for a row it cannot read; listings show the row (``TaskInfo.corrupt``).
    """

    def __init__(
        self, message: str, task_id: int | None = None, column: str | None = None, raw: bytes | list[int] | None = None
    ) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.column = column
        # The core passes a list of ints (what a Rust byte vector becomes).
        self.raw = None if raw is None else bytes(raw)


class ForeignDatabase(StorageError):
    """The file is another application's SQLite database (it has tables but no ferroq
    schema); ferroq refused it and left it untouched."""


class DiskFull(StorageError):
    """The disk is full; the operation was rolled back and nothing was lost."""


class SchemaTooNew(StorageError):
    """The file was written by a newer ferroq."""


class TaskNotImportable(InvalidArgument):
    """A process-pool worker cannot run this task: its processor must be importable by
    reference (module + qualified name) in a child process, and it is not (a lambda, a
    nested function, or a task defined under ``if __name__ == "__main__":``)."""


class ProcessCrashed(FerroqError):
    """The child process running a task died (``os._exit``, a segfault, killed by the OOM
    killer...). The run costs one attempt and is retried per policy; the worker lives on."""


class Retry(Exception):
    """Raise from a processor to run the task again after ``delay`` seconds.

    The run still counts as an attempt; when attempts are used up the task goes dead.
    """

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        from . import _checks  # here: _checks imports this module

        # An infinite delay passed a plain ">= 0" test and killed the worker's runner thread
        # when it turned the delay into milliseconds.
        _checks.optional_seconds("Retry delay", delay)
        self.delay = delay
        super().__init__(reason or (f"retry in {delay}s" if delay is not None else "retry"))


class Fail(Exception):
    """Raise from a processor to send the task to dead at once, whatever attempts remain."""


class ValidationError(Fail):
    """Raise from a processor when the task itself is wrong (bad input): dead at once, no
    retries, and never counted by a circuit breaker (the resource is fine; the task is not)."""


class TransientError(Exception):
    """Raise (or subclass) for a passing failure such as a network blip: retried with backoff,
    and counted by the group's circuit breaker."""


class InfrastructureError(TransientError):
    """Raise (or subclass) when a resource is down (a database, an upstream service):
    retried with backoff, and counted by the group's circuit breaker. A breaker set to
    ``CircuitBreaker(counts=(InfrastructureError,))`` counts only these."""


class RateLimited(Retry):
    """Raise from a processor when the resource asks to slow down (HTTP 429 with a Retry-After).

    The task runs again after ``retry_after`` seconds without using up an attempt, and is
    never counted by a circuit breaker. If the task's resource group has a ``Throttle``, the
    whole group waits that long (every worker, every process), and an adaptive throttle
    lowers its concurrency.
    """

    def __init__(self, retry_after: float, reason: str = "") -> None:
        from . import _checks  # here: _checks imports this module

        _checks.seconds("RateLimited retry_after", retry_after)
        super().__init__(delay=retry_after, reason=reason or f"rate limited, retry after {retry_after}s")
        self.retry_after = float(retry_after)
