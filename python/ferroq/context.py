"""What a running processor can see and do: ``ferroq.current_task()``."""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from .errors import FerroqError, InvalidArgument

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["TaskContext", "current_task"]

_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("ferroq_task", default=None)


@dataclass(eq=False)
class TaskContext:
    """The run in progress: its ids and counters, plus progress, heartbeat and cancellation."""

    id: int
    name: str
    resource_group: str
    attempt: int
    max_attempts: int
    enqueued_at: datetime
    token: int
    worker: Worker = field(repr=False)
    _stopped: threading.Event = field(default_factory=threading.Event, repr=False)

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Stores progress (0.0 to 1.0) on the task. Raises ``LeaseLost`` if the run was taken over."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise InvalidArgument(f"progress must be a number between 0 and 1, got {fraction!r}")
        self.worker.queue._store.progress(self.id, self.token, float(fraction))

    def heartbeat(self) -> None:
        """Extends the lease now (the worker also does so on its own while the processor runs)."""
        self.worker._heartbeat([self])

    def cancelled(self) -> bool:
        """True once this run should stop: its lease was lost, it timed out, or the worker is stopping
        and this task is being released. A long processor should check it and return early."""
        return self._stopped.is_set()


def current_task() -> TaskContext:
    """The context of the task running in this thread or coroutine."""
    ctx = _current.get()
    if ctx is None:
        raise FerroqError("current_task() called outside a running ferroq task")
    return ctx
