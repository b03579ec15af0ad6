"""How a run's end becomes its outcome: a result encoded (or refused: too large, not
serializable), a failure classified (fatal or retried per the task's retry policy, its
delay, a ``Retry``'s or a rate limit's hint), and whether it counts toward its group's
circuit breaker (told to the in-process breaker view at once)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import (
    CorruptDatabase,
    DatabasePathError,
    Fail,
    PayloadError,
    RateLimited,
    Retry,
    SchemaTooNew,
    UnknownTaskName,
)
from ..info import TaskError, clip_message
from ..policies import CircuitBreaker, RetryPolicy
from ..tracebacks import format_traceback
from .process_pool import ChildError
from .runs import Job, Outcome, Run, completed_null, runs_of, stop_clock

if TYPE_CHECKING:
    from ..queue import Queue
    from .breaker_view import BreakerView

#: Storage errors that retrying cannot fix: the worker stops and raises them.
FATAL_STORAGE = (CorruptDatabase, DatabasePathError, SchemaTooNew)
DEFAULT_POLICY = RetryPolicy()
DEFAULT_BREAKER = CircuitBreaker()


def matches(exc: BaseException, classes: tuple[type[BaseException], ...]) -> bool:
    """isinstance, also for an error a child process described by its class names."""
    return exc.matches(classes) if isinstance(exc, ChildError) else isinstance(exc, classes)


def describe(exc: BaseException | None) -> str:
    # A child's error already reads "Type: message". Clipped like the stored message: one
    # log line per failure must not carry a multi-megabyte message.
    return clip_message(str(exc) if isinstance(exc, ChildError) else f"{type(exc).__name__}: {exc}")


def is_fatal(run: Run, exc: BaseException) -> bool:
    """Whether the failure skips the remaining attempts: Fail, our own refusals, or the policy."""
    if isinstance(exc, Retry):
        return False
    if isinstance(exc, (Fail, UnknownTaskName, PayloadError)):
        return True
    policy = run.task.options.retry if run.task is not None else DEFAULT_POLICY
    if isinstance(exc, ChildError):
        return exc.is_fatal(policy)
    return policy.is_fatal(exc)


def internal_failure(job: Job, exc: Exception) -> list[Outcome]:
    """Fails the unsettled runs of a job that hit a bug in the worker (retried per the
    default policy), so none is left holding its lease forever."""
    error = TaskError.from_exception(exc, format_traceback(exc)).to_json()
    return [
        (run, None, error, DEFAULT_POLICY.delay_ms(run.ctx.attempt), exc, False, None)
        for run in runs_of(job)
        if run.settle()
    ]


class Outcomes:
    """Builds outcomes for one ``Worker.run``. The ``settled_*`` methods first settle the run:
    they return None if something else (a timeout, a release) already decided it."""

    __slots__ = ("queue", "breakers", "max_payload")

    def __init__(self, queue: Queue, breakers: BreakerView, max_payload: int) -> None:
        self.queue = queue
        self.breakers = breakers
        self.max_payload = max_payload

    def settled_success(self, run: Run, result: Any) -> Outcome | None:
        if not run.settle():
            return None
        if result is None:
            return completed_null(run)
        try:
            data = self.queue.serializer.dumps(result)
        except PayloadError as e:
            return self.failure(
                run, PayloadError(f"result of task {run.ctx.name!r} cannot be stored: {e}"), None, fatal=True
            )
        return self.encoded(run, data)

    def settled_encoded(self, run: Run, data: bytes) -> Outcome | None:
        """A result a child process already encoded."""
        return self.encoded(run, data) if run.settle() else None

    def encoded(self, run: Run, data: bytes) -> Outcome:
        if len(data) > self.max_payload:
            exc = PayloadError(
                f"result of task {run.ctx.name!r} cannot be stored: it is {len(data)} bytes, "
                f"over the limit of {self.max_payload} bytes"
            )
            return self.failure(run, exc, None, fatal=True)
        stop_clock(run)
        return (run, data, None, None, None, False, None)

    def settled_failure(self, run: Run, exc: BaseException, tb: str | None) -> Outcome | None:
        if not run.settle():
            return None
        return self.failure(run, exc, tb, fatal=is_fatal(run, exc))

    def failure(self, run: Run, exc: BaseException, tb: str | None, *, fatal: bool) -> Outcome:
        delay: int | None = None
        if not fatal:
            policy = run.task.options.retry if run.task is not None else DEFAULT_POLICY
            hinted = exc.delay if isinstance(exc, (Retry, ChildError)) else None
            delay = policy.delay_ms(run.ctx.attempt) if hinted is None else int(hinted * 1000)
        error = exc.task_error() if isinstance(exc, ChildError) else TaskError.from_exception(exc, tb)
        # A rate limit holds the group (and gives the attempt back); the group's breaker
        # policy decides whether anything else counts toward opening it.
        hold = delay if matches(exc, (RateLimited,)) else None
        counts = (
            hold is None
            and not matches(exc, (UnknownTaskName, PayloadError))
            and self.breaker_policy(run.ctx.resource_group).counts_failure(exc, matches)
        )
        if counts:  # as the run ends, before its outcome is written: see breaker_view
            self.breakers.failed(run.ctx.resource_group)
        stop_clock(run)
        return (run, None, error.to_json(), delay, exc, counts, hold)

    def breaker_policy(self, group: str) -> CircuitBreaker:
        declared = self.queue._groups.get(group)
        if declared is not None and declared.breaker is not None:
            return declared.breaker
        return DEFAULT_BREAKER
