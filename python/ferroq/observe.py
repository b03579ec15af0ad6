"""Seeing the queue from outside: metrics with latency percentiles, lifecycle events as they
happen (from any process), registered workers and a health check. ``Queue`` gets these
methods from ``Observable``; the figures come from the file, so any process can read them."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Iterator

from . import _aio, _checks, _core
from ._units import duration
from .errors import CorruptDatabase, StorageError
from .forecast import Forecast
from .forecast import forecast as _forecast
from .groups import Event, group_name
from .info import from_ms

if TYPE_CHECKING:
    from ._core import Store
    from .profiling import Profile

__all__ = [
    "Observability",
    "Percentiles",
    "GroupMetrics",
    "WorkerState",
    "MissingProcessor",
    "HealthCheck",
    "Health",
    "Subscription",
    "Observable",
]

_DAY = 86_400.0


@dataclass(frozen=True)
class Observability:
    """How long the file keeps observability rows (workers prune them as they run):
    events, raw 10-second metrics, hourly metrics, and registrations of stopped workers."""

    events_age: float = 7 * _DAY
    metrics_raw_age: float = _DAY
    metrics_hourly_age: float = 30 * _DAY
    workers_age: float = _DAY

    def __post_init__(self) -> None:
        for name in ("events_age", "metrics_raw_age", "metrics_hourly_age", "workers_age"):
            _checks.seconds(name, getattr(self, name), positive=True)

    def prune(self, q: Observable) -> int:
        """Deletes rows past these ages; returns how many."""
        return int(
            q._store.prune_observability(
                _ms(self.events_age), _ms(self.metrics_raw_age), _ms(self.metrics_hourly_age), _ms(self.workers_age)
            )
        )


@dataclass(frozen=True)
class Percentiles:
    """A duration distribution in seconds (from an HDR-style histogram: within about 3%)."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def from_core(cls, summary: tuple[int, int, int, int, int, int]) -> Percentiles:
        count, sum_us, max_us, p50, p95, p99 = summary
        mean = sum_us / count / 1e6 if count else 0.0
        return cls(count, mean, p50 / 1e6, p95 / 1e6, p99 / 1e6, max_us / 1e6)


@dataclass(frozen=True)
class GroupMetrics:
    """One resource group's figures over a window, summed over every worker process.

    ``wait``: from when a task was due (enqueued, or its delay ended) until a worker claimed
    it (millisecond resolution). ``run``: how long processors ran. Rates are per second."""

    group: str
    window: float
    enqueued: int
    started: int
    completed: int
    retried: int
    dead: int
    cancelled: int
    wait: Percentiles
    run: Percentiles
    #: Enqueues of cached tasks answered without a new run (a cached result, or a run in
    #: flight they attached to), and those that started one.
    cache_hits: int = 0
    cache_misses: int = 0

    @property
    def failed(self) -> int:
        """Failed runs (each either retried or dead)."""
        return self.retried + self.dead

    @property
    def error_rate(self) -> float:
        """Failed runs over finished runs."""
        finished = self.completed + self.failed
        return self.failed / finished if finished else 0.0

    def rate(self, counter: str) -> float:
        """``counter`` per second over the window, e.g. ``rate("completed")``."""
        return float(getattr(self, counter)) / self.window


@dataclass(frozen=True)
class WorkerState:
    """A worker as registered in the file."""

    id: str
    queue: str
    hostname: str
    pid: int
    concurrency: int
    pool: str
    started_at: datetime
    last_seen: datetime
    stopped_at: datetime | None
    alive: bool
    #: Tasks it holds a lease on now.
    running: int = 0


@dataclass(frozen=True)
class MissingProcessor:
    """A task name that running workers claimed and had no processor for (they give such
    tasks back: see ``Worker(unknown_task_grace=)``)."""

    task: str
    #: The running workers that have no processor for it.
    workers: tuple[str, ...]
    #: Pending tasks of that name.
    pending: int


@dataclass(frozen=True)
class HealthCheck:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Health:
    """``ok`` when every check passed."""

    ok: bool
    checks: tuple[HealthCheck, ...]
    workers: tuple[WorkerState, ...]
    #: How long the longest-waiting due task has waited, in seconds (0 if none).
    oldest_pending_age: float
    #: Tasks that went dead within the dead window.
    recent_dead: int


class Subscription:
    """A running ``Queue.subscribe``: call ``close()`` to stop it."""

    def __init__(self, thread: threading.Thread, stop: threading.Event, store: Store) -> None:
        self._thread = thread
        self._stop = stop
        self._store = store

    def close(self, timeout: float = 5.0) -> None:
        """Stops the feed; waits at most ``timeout`` seconds for the callback in progress."""
        _checks.seconds("timeout", timeout)
        self._stop.set()
        self._store.notify()
        self._thread.join(timeout)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: A worker is alive if it renewed its registration within this many seconds.
WORKER_ALIVE_WITHIN = 10.0


class Observable:
    """Metrics, events, workers and health of a ``Queue``."""

    _store: Store
    name: str
    observability: Observability

    def metrics(self, window: float = 3600.0) -> dict[str, GroupMetrics]:
        """Figures per resource group over the last ``window`` seconds, as every worker
        flushed them (every 10 s, and when it stops). Windows within the raw retention (a
        day) use 10-second intervals; longer ones use hours."""
        seconds = _checks.seconds("window", window, positive=True)
        since = self._store.now_ms() - int(seconds * 1000)
        raw = self._store.metrics(self.name, since, _ms(self.observability.metrics_raw_age))
        return {
            group: GroupMetrics(
                group=group,
                window=seconds,
                enqueued=d["enqueued"],
                started=d["started"],
                completed=d["completed"],
                retried=d["retried"],
                dead=d["dead"],
                cancelled=d["cancelled"],
                wait=Percentiles.from_core(d["wait"]),
                run=Percentiles.from_core(d["run"]),
                cache_hits=d["cache_hits"],
                cache_misses=d["cache_misses"],
            )
            for group, d in sorted(raw.items())
        }

    def forecast(self, group: str | None = None, horizon: float = 600.0, interval: float = 60.0) -> Forecast:
        """Predicted arrivals (tasks enqueued) per ``interval`` seconds (a multiple of 10) over
        the next ``horizon`` seconds, for one resource group or (``None``) the whole queue,
        with a 95% prediction interval, from the stored metrics: a daily or weekly season
        from the hourly rows when the history shows one, a damped-trend level from the
        10-second rows. ``Forecast.explanation`` says what was chosen and why (see
        ``ferroq.forecast``)."""
        if group is not None:
            group = group_name(group)
            _core.check_name("resource group", _checks.text("group", group))
        return _forecast(
            self._store,
            self.name,
            group,
            horizon=horizon,
            interval=interval,
            now_ms=self._store.now_ms(),
            raw_keep_ms=_ms(self.observability.metrics_raw_age),
        )

    def run_times(self, window: float = 600.0) -> dict[str, Percentiles]:
        """Run times per task name over the last ``window`` seconds, whatever group ran
        them, as every worker flushed them (what ``route(slower_than=...)`` reads)."""
        seconds = _checks.seconds("window", window, positive=True)
        since = self._store.now_ms() - int(seconds * 1000)
        rows = self._store.task_run_times(self.name, since, _ms(self.observability.metrics_raw_age))
        return {name: Percentiles.from_core(summary) for name, summary in rows}

    def profile(self, window: float = 60.0) -> Profile:
        """What profiling workers (``Worker(profile=True)``) recorded over the last
        ``window`` seconds (to the 10-second interval): time per stage and per task name."""
        from .profiling import build  # the profiling module imports this one

        seconds = _checks.seconds("window", window, positive=True)
        since = self._store.now_ms() - int(seconds * 1000)
        rows = self._store.named_metrics(self.name, "profile:", since, _ms(self.observability.metrics_raw_age))
        return build(seconds, rows)

    def workers(self) -> list[WorkerState]:
        """Workers registered on this queue, most recently seen first."""
        now = self._store.now_ms()
        out = []
        for d in self._store.workers(self.name):
            alive = d["stopped_at"] is None and now - d["last_seen"] <= WORKER_ALIVE_WITHIN * 1000
            out.append(
                WorkerState(
                    id=d["id"],
                    queue=d["queue"],
                    hostname=d["hostname"],
                    pid=d["pid"],
                    concurrency=d["concurrency"],
                    pool=d["pool"],
                    started_at=_dt(d["started_at"]),
                    last_seen=_dt(d["last_seen"]),
                    stopped_at=from_ms(d["stopped_at"]),
                    alive=alive,
                    running=d["running"],
                )
            )
        return out

    def missing_processors(self) -> list[MissingProcessor]:
        """Task names that running workers have no processor for (each worker records a
        name when it first gives such a task back), with the pending tasks of each."""
        alive_since = self._store.now_ms() - int(WORKER_ALIVE_WITHIN * 1000)
        return [
            MissingProcessor(task, tuple(workers), pending)
            for task, workers, pending in self._store.no_processor(self.name, alive_since)
        ]

    def health(
        self,
        *,
        max_pending_age: float = 300.0,
        dead_window: float = 3600.0,
        max_dead: int | None = None,
        require_workers: bool = True,
    ) -> Health:
        """Checks that the database is reachable and intact (quick_check), that a worker is
        alive (``require_workers``), that no due task has waited more than
        ``max_pending_age`` seconds, and (with ``max_dead``) that at most that many tasks went
        dead in the last ``dead_window`` seconds. Never raises for a broken database: that is
        a failed check."""
        _checks.seconds("max_pending_age", max_pending_age)
        _checks.seconds("dead_window", dead_window, positive=True)
        if max_dead is not None:
            _checks.integer("max_dead", max_dead, 0, _checks.INT64_MAX)
        checks: list[HealthCheck] = []
        try:
            findings = list(self._store.quick_check())
        except (CorruptDatabase, StorageError) as e:
            findings = [str(e)]
        intact = findings == ["ok"]
        checks.append(HealthCheck("database", intact, "intact" if intact else "; ".join(findings)[:500]))
        if not intact:
            return Health(False, tuple(checks), (), 0.0, 0)
        try:
            workers = tuple(self.workers())
            now = self._store.now_ms()
            oldest = self._store.oldest_due(self.name)
            dead = int(self._store.dead_since(self.name, now - int(dead_window * 1000)))
        except StorageError as e:
            checks.append(HealthCheck("database", False, str(e)))
            return Health(False, tuple(checks), (), 0.0, 0)
        alive = [w for w in workers if w.alive]
        if require_workers:
            checks.append(HealthCheck("workers", bool(alive), f"{len(alive)} alive of {len(workers)} registered"))
        age = max(0.0, (now - oldest) / 1000) if oldest is not None else 0.0
        checks.append(
            HealthCheck(
                "pending",
                age <= max_pending_age,
                f"oldest due task waited {duration(age)} (limit {duration(max_pending_age)})",
            )
        )
        if max_dead is not None:
            checks.append(
                HealthCheck(
                    "dead", dead <= max_dead, f"{dead} dead in the last {duration(dead_window)} (limit {max_dead})"
                )
            )
        return Health(all(c.ok for c in checks), tuple(checks), workers, age, dead)

    def watch_events(
        self,
        *,
        after: int | None = None,
        kinds: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[Event]:
        """Yields events as they are committed, by any process, in order. ``after``: the last
        id already seen (default: only events from now on; 0 for all kept). Stops after
        ``timeout`` seconds without a new event (None: never)."""
        if after is not None:
            _checks.integer("after", after, 0, _checks.INT64_MAX)
        _checks.optional_seconds("timeout", timeout)
        wanted = None if kinds is None else frozenset(kinds)
        store = self._store
        cursor = after if after is not None else _last_event_id(store, self.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            token = store.change_token()
            rows = store.events(self.name, None, cursor, 1000)
            for row in rows:
                cursor = row[0]
                event = Event.from_core(row)
                if wanted is None or event.kind in wanted:
                    yield event
            if rows:
                if deadline is not None:
                    deadline = time.monotonic() + timeout  # type: ignore[operator]
                continue
            wait = 0.5 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                return
            store.wait_for_change(token, min(wait, 0.5))

    def aevents(
        self,
        *,
        after: int | None = None,
        kinds: str | Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Event]:
        """``watch_events`` for asyncio code: ``async for event in q.aevents(...)`` yields
        events as they are committed, by any process, in order, woken by the store's change
        notifications (no polling on the loop). ``after``: the last id already seen (default:
        only events from the first iteration on; 0 for all kept); ``kinds``: only these
        kinds; stops after ``timeout`` seconds without a new event (None: never). Arguments
        are checked here, at the call."""
        if after is not None:
            _checks.integer("after", after, 0, _checks.INT64_MAX)
        _checks.optional_seconds("timeout", timeout)
        wanted = (
            None
            if kinds is None
            else frozenset(_checks.text("kind", k) for k in ([kinds] if isinstance(kinds, str) else kinds))
        )
        return self._aevents(after, wanted, timeout)

    async def _aevents(
        self, after: int | None, wanted: frozenset[str] | None, timeout: float | None
    ) -> AsyncIterator[Event]:
        store, watcher = self._store, _aio.watcher(self)  # type: ignore[arg-type]
        cursor = after if after is not None else await _aio.run(_last_event_id, store, self.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            waiter = watcher.register()  # before the read: a commit after it wakes us
            try:
                rows = await _aio.run(store.events, self.name, None, cursor, 1000)
                if not rows:
                    wait = _aio.RECHECK if deadline is None else deadline - time.monotonic()
                    if wait <= 0:
                        return
                    await watcher.wait(waiter, min(wait, _aio.RECHECK))
                    continue
            finally:
                watcher.unregister(waiter)  # not held while the consumer handles events
            for row in rows:
                cursor = row[0]
                event = Event.from_core(row)
                if wanted is None or event.kind in wanted:
                    yield event
            if deadline is not None:
                deadline = time.monotonic() + timeout  # type: ignore[operator]

    def subscribe(
        self, callback: Callable[[Event], Any], *, kinds: Iterable[str] | None = None, after: int | None = None
    ) -> Subscription:
        """Calls ``callback(event)`` on a background thread for every new event (from any
        process), in order, until ``close()``. An exception in the callback is logged and
        the subscription goes on."""
        if not callable(callback):
            raise TypeError(f"subscribe needs a callable, got {callback!r}")
        if after is not None:
            _checks.integer("after", after, 0, _checks.INT64_MAX)
        wanted = None if kinds is None else frozenset(kinds)
        stop = threading.Event()
        store = self._store
        start = after if after is not None else _last_event_id(store, self.name)

        def pump() -> None:
            import logging

            log = logging.getLogger("ferroq.events")
            cursor = start
            while not stop.is_set():
                token = store.change_token()
                try:
                    rows = store.events(self.name, None, cursor, 1000)
                except StorageError as e:
                    log.warning("reading events failed, retrying: %s", e)
                    stop.wait(1.0)
                    continue
                for row in rows:
                    cursor = row[0]
                    event = Event.from_core(row)
                    if wanted is None or event.kind in wanted:
                        try:
                            callback(event)
                        except Exception:
                            log.exception("event subscriber failed on %s", event)
                if not rows:
                    store.wait_for_change(token, 0.5)

        thread = threading.Thread(target=pump, name="ferroq-events", daemon=True)
        thread.start()
        return Subscription(thread, stop, store)


def _last_event_id(store: Store, queue: str) -> int:
    return int(store.last_event_id())


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _dt(ms: int) -> datetime:
    value = from_ms(ms)
    assert value is not None
    return value
