"""Routing at enqueue: rules that send a task to another resource group (a lane with its
own concurrency) by its name, its arguments, or its observed run time, so short tasks do
not wait behind long ones in one group (head-of-line blocking).

Rules are checked in the order ``Queue.route`` added them; the first that matches sets the
task's group, and the reason is stored with the task (``TaskInfo.route``, ``ferroq
inspect``). Run times are every worker's, per task name, as flushed to the metrics table
(``task_run:<name>``): a rule on them works across processes and restarts."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Collection

from . import _checks
from .errors import InvalidArgument
from .groups import group_name
from .task import TaskBase

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["Route", "RunTimes"]

#: How often a producer re-reads the run times (seconds): a slower task is routed within
#: this long after a worker flushed its runs (every 10 s).
REFRESH = 5.0


@dataclass(frozen=True)
class Route:
    """One rule: tasks named in ``tasks`` (all when empty) for which ``when(*args, **kwargs)``
    is true (always when None) and, with ``slower_than``, whose p95 run time over the last
    ``window`` seconds (at least ``min_runs`` runs) exceeds it, go to group ``to``."""

    to: str
    tasks: frozenset[str] = frozenset()
    when: Callable[..., bool] | None = None
    slower_than: float | None = None
    window: float = 600.0
    min_runs: int = 20
    name: str | None = None

    def describe(self) -> str:
        parts = [f"to {self.to!r}"]
        if self.tasks:
            parts.append("tasks " + ", ".join(sorted(self.tasks)))
        if self.when is not None:
            parts.append(f"when {getattr(self.when, '__name__', 'predicate')}")
        if self.slower_than is not None:
            parts.append(f"p95 run > {self.slower_than:g} s")
        return (f"{self.name}: " if self.name else "") + ", ".join(parts)


class RunTimes:
    """The p95 run time and run count of each task name over a window, read from the
    metrics table at most every ``REFRESH`` seconds (per window)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._lock = threading.Lock()
        self._read: dict[float, tuple[float, dict[str, tuple[int, float]]]] = {}

    def get(self, window: float) -> dict[str, tuple[int, float]]:
        """{task name: (runs, p95 seconds)} over the last ``window`` seconds."""
        now = time.monotonic()
        with self._lock:
            cached = self._read.get(window)
            if cached is not None and now - cached[0] < REFRESH:
                return cached[1]
        table = self.queue.run_times(window)
        by_name = {name: (p.count, p.p95) for name, p in table.items()}
        with self._lock:
            self._read[window] = (now, by_name)
        return by_name


class Router:
    """A queue's rules, applied by ``task.call()`` (so every enqueue path)."""

    def __init__(self, queue: Queue) -> None:
        self.routes: list[Route] = []
        self.run_times = RunTimes(queue)

    def add(self, route: Route) -> None:
        self.routes.append(route)

    def pick(self, task: str, group: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str] | None:
        """(group, reason) of the first rule that moves this call elsewhere, or None."""
        for r in self.routes:
            if r.tasks and task not in r.tasks:
                continue
            if r.when is not None and not r.when(*args, **kwargs):
                continue
            reason = r.describe()
            if r.slower_than is not None:
                runs, p95 = self.run_times.get(r.window).get(task, (0, 0.0))
                if runs < r.min_runs or p95 <= r.slower_than:
                    continue
                reason += f" (observed p95 {p95:.3g} s over {runs} runs)"
            return (r.to, reason) if r.to != group else None
        return None


def make_route(
    to: str,
    tasks: Collection[Any] | Any | None,
    when: Any,
    slower_than: Any,
    window: Any,
    min_runs: Any,
    name: str | None,
) -> Route:
    """A checked ``Route`` from ``Queue.route``'s arguments."""
    if tasks is None:
        names: frozenset[str] = frozenset()
    else:
        items = [tasks] if isinstance(tasks, (str, TaskBase)) else tasks
        if not isinstance(items, (list, tuple, set, frozenset)) or not items:
            raise InvalidArgument(
                f"task must be a task, a task name, or a non-empty list of them (None: every task), got {tasks!r}"
            )
        names = frozenset(t.name if isinstance(t, TaskBase) else _checks.text("task name", t) for t in items)
    if when is not None and not callable(when):
        raise InvalidArgument(f"when must be a function of the task's arguments, got {when!r}")
    slower = _checks.optional_seconds("slower_than", slower_than, positive=True)
    seconds = _checks.seconds("window", window, positive=True)
    runs = _checks.integer("min_runs", min_runs, 1, 1_000_000)
    if name is not None:
        _checks.text("route name", name)
    return Route(group_name(to), names, when, slower, seconds, runs, name)
