"""What a running processor can see and do: ``ferroq.current_task()``."""

from __future__ import annotations

import contextvars
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from . import _checks
from .errors import FerroqError, InvalidArgument

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["TaskContext", "current_task"]

_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("ferroq_task", default=None)


class TaskContext:
    """The run in progress: its ids and counters, plus progress, heartbeat and cancellation."""

    # Slots and plain attributes: one of these is made per run, on the hot path.
    __slots__ = ("id", "name", "resource_group", "attempt", "max_attempts", "_created_ms", "token", "worker", "stopped")

    def __init__(
        self,
        id: int,
        name: str,
        resource_group: str,
        attempt: int,
        max_attempts: int,
        created_ms: int,
        token: int,
        worker: Worker,
    ) -> None:
        self.id = id
        self.name = name
        self.resource_group = resource_group
        self.attempt = attempt
        self.max_attempts = max_attempts
        self._created_ms = created_ms
        self.token = token
        self.worker = worker
        #: Set when this run should stop (lease lost, timed out, released at shutdown).
        self.stopped = False

    def __repr__(self) -> str:
        return (
            f"TaskContext(id={self.id}, name={self.name!r}, attempt={self.attempt}/{self.max_attempts}, "
            f"resource_group={self.resource_group!r})"
        )

    @property
    def enqueued_at(self) -> datetime:
        """When the task was enqueued."""
        return datetime.fromtimestamp(self._created_ms / 1000, tz=timezone.utc)

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Stores progress (0.0 to 1.0) and an optional short message on the task, and records
        a ``progress`` event. Raises ``LeaseLost`` if the run was taken over."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise InvalidArgument(f"progress must be a number between 0 and 1, got {fraction!r}")
        self.worker.queue._store.progress(
            self.id, self.token, float(fraction), _checks.optional_text("progress message", message)
        )

    def heartbeat(self) -> None:
        """Extends the lease now (the worker also does so on its own while the processor runs)."""
        self.worker._heartbeat([self])

    def cancelled(self) -> bool:
        """True once this run should stop: its lease was lost, it timed out, or the worker is
        stopping and gave the task back. A long processor should check it and return early."""
        return self.stopped


def current_task() -> TaskContext:
    """The context of the task running in this thread or coroutine."""
    ctx = _current.get()
    if ctx is None:
        raise FerroqError("current_task() called outside a running ferroq task")
    return ctx
