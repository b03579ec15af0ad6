"""Declarative policies the queue and worker enforce."""

from __future__ import annotations

from dataclasses import dataclass, field

import math
from typing import Callable

from . import _checks, _core
from .errors import Fail, InvalidArgument, Retry

__all__ = ["RetryPolicy", "Retention", "CircuitBreaker", "Throttle", "PriorityAging", "Cache"]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: the n-th failed run waits ``min(base_delay * 2**(n-1), max_delay)``
    seconds, then ``± jitter`` of that at random.

    ``fatal`` lists exception classes that go dead at once. If ``retry_on`` is given,
    only those classes are retried and every other exception is fatal.
    """

    base_delay: float = 1.0
    max_delay: float = 60.0
    jitter: float = 0.1
    fatal: tuple[type[BaseException], ...] = ()
    retry_on: tuple[type[BaseException], ...] | None = None

    def __post_init__(self) -> None:
        _checks.seconds("base_delay", self.base_delay)
        _checks.seconds("max_delay", self.max_delay)
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter <= 1:
            raise InvalidArgument(f"jitter is a fraction in [0, 1], got {self.jitter!r}")
        for name in ("fatal", "retry_on"):
            classes = getattr(self, name)
            if classes is None and name == "retry_on":
                continue
            if not isinstance(classes, tuple) or not all(
                isinstance(c, type) and issubclass(c, BaseException) for c in classes
            ):
                raise InvalidArgument(f"{name} must be a tuple of exception classes, got {classes!r}")

    def is_fatal(self, exc: BaseException) -> bool:
        """Whether this exception should skip the remaining attempts."""
        if isinstance(exc, self.fatal):
            return True
        return self.retry_on is not None and not isinstance(exc, self.retry_on)

    def delay_ms(self, attempt: int) -> int:
        """Backoff before the next run, after the ``attempt``-th run failed."""
        return _core.backoff_delay_ms(self.base_delay, self.max_delay, self.jitter, attempt)


@dataclass(frozen=True)
class Retention:
    """How long finished tasks are kept (like BullMQ's removeOnComplete / removeOnFail).

    ``completed_*`` apply to completed and cancelled tasks, ``dead_*`` to dead ones.
    A task is pruned when it is older than ``*_age`` seconds (since it finished) or
    falls outside the newest ``*_count``. ``None`` means no limit.
    """

    completed_age: float | None = None
    completed_count: int | None = None
    dead_age: float | None = None
    dead_count: int | None = None
    interval: float = field(default=60.0)

    def __post_init__(self) -> None:
        for name in ("completed_age", "dead_age"):
            _checks.optional_seconds(name, getattr(self, name))
        _checks.seconds("interval", self.interval, positive=True)
        for name in ("completed_count", "dead_count"):
            value = getattr(self, name)
            if value is not None:
                _checks.integer(name, value, 0, _checks.INT64_MAX)

    def as_core_args(self) -> tuple[int | None, int | None, int | None, int | None]:
        """(completed_age_ms, completed_count, dead_age_ms, dead_count) for the core."""
        return _ms(self.completed_age), self.completed_count, _ms(self.dead_age), self.dead_count


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def _exception_classes(name: str, classes: object) -> None:
    if not isinstance(classes, tuple) or not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        raise InvalidArgument(f"{name} must be a tuple of exception classes, got {classes!r}")


@dataclass(frozen=True)
class CircuitBreaker:
    """Stops claiming a resource group's tasks after ``failure_threshold`` counted failures
    within ``window`` seconds (closed -> open). After ``open_for`` seconds it lets
    ``half_open_probes`` tasks through (half_open): a success closes it, a failure opens it
    again for twice as long, up to ``max_open_for``. While open, the group's tasks stay
    pending and keep their attempts; other groups run normally.

    Which failures count: instances of ``counts`` that are not instances of ``ignores``.
    Never counted: ``ValidationError``/``Fail`` (the task is wrong, not the resource),
    ``RateLimited`` and ``Retry`` (the processor asked to wait).
    """

    failure_threshold: int = 5
    window: float = 60.0
    open_for: float = 30.0
    half_open_probes: int = 1
    max_open_for: float | None = None
    counts: tuple[type[BaseException], ...] = (Exception,)
    ignores: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        _checks.integer("failure_threshold", self.failure_threshold, 1, 1_000_000)
        _checks.seconds("window", self.window, positive=True)
        _checks.seconds("open_for", self.open_for, positive=True)
        _checks.integer("half_open_probes", self.half_open_probes, 1, 1_000_000)
        if self.max_open_for is not None and _checks.seconds("max_open_for", self.max_open_for) < self.open_for:
            raise InvalidArgument(f"max_open_for ({self.max_open_for}) must be at least open_for ({self.open_for})")
        _exception_classes("counts", self.counts)
        _exception_classes("ignores", self.ignores)

    def counts_failure(
        self,
        exc: BaseException,
        matches: Callable[[BaseException, tuple[type[BaseException], ...]], bool] = isinstance,
    ) -> bool:
        """Whether this failure of a task of the group counts toward opening the breaker.
        ``matches`` is the instance check (a worker passes one that also understands errors
        described by a child process)."""
        if matches(exc, (Fail, Retry)):
            return False
        return matches(exc, self.counts) and not matches(exc, self.ignores)

    def as_core_args(self) -> tuple[int, int, int, int, int]:
        """(threshold, window_ms, open_ms, max_open_ms, probes) for the core."""
        max_open = self.max_open_for if self.max_open_for is not None else 10 * self.open_for
        return (
            self.failure_threshold,
            _ms_at_least_1(self.window),
            _ms_at_least_1(self.open_for),
            _ms_at_least_1(max_open),
            self.half_open_probes,
        )


@dataclass(frozen=True)
class Throttle:
    """Limits a resource group across every worker and process on the file.

    - ``rate``: tasks started per second (a token bucket holding up to ``burst`` tokens;
      default burst: one second's worth, at least 1).
    - ``max_concurrency``: tasks of the group running at once; a crashed worker's slot frees
      when its lease expires.
    - ``adaptive=True``: the running cap moves between ``min_concurrency`` and
      ``max_concurrency`` by AIMD: +1 per cap's worth of successful runs, halved (at most once
      per ``cooldown`` seconds) when more than ``error_rate`` of the runs in a flush failed
      (counted failures and rate limits) or took longer than ``target_latency`` seconds.
    """

    rate: float | None = None
    burst: float | None = None
    max_concurrency: int | None = None
    adaptive: bool = False
    min_concurrency: int = 1
    target_latency: float | None = None
    error_rate: float = 0.1
    cooldown: float = 1.0

    def __post_init__(self) -> None:
        if self.rate is None and self.max_concurrency is None:
            raise InvalidArgument("a Throttle needs a rate, a max_concurrency or both")
        if self.rate is not None:
            if (
                isinstance(self.rate, bool)
                or not isinstance(self.rate, (int, float))
                or not math.isfinite(self.rate)
                or self.rate <= 0
            ):
                raise InvalidArgument(f"rate must be a positive number of tasks per second, got {self.rate!r}")
        if self.burst is not None:
            if self.rate is None:
                raise InvalidArgument("burst applies to a rate; give rate too")
            if (
                isinstance(self.burst, bool)
                or not isinstance(self.burst, (int, float))
                or not math.isfinite(self.burst)
                or self.burst < 1
            ):
                raise InvalidArgument(f"burst must be a number >= 1, got {self.burst!r}")
        if self.max_concurrency is not None:
            _checks.integer("max_concurrency", self.max_concurrency, 1, 1_000_000)
        if not isinstance(self.adaptive, bool):
            raise InvalidArgument(f"adaptive must be a bool, got {self.adaptive!r}")
        if self.adaptive and self.max_concurrency is None:
            raise InvalidArgument("adaptive mode moves the concurrency cap: give max_concurrency")
        _checks.integer("min_concurrency", self.min_concurrency, 1, self.max_concurrency or 1_000_000)
        _checks.optional_seconds("target_latency", self.target_latency, positive=True)
        if (
            isinstance(self.error_rate, bool)
            or not isinstance(self.error_rate, (int, float))
            or not 0 <= self.error_rate < 1
        ):
            raise InvalidArgument(f"error_rate must be a fraction in [0, 1), got {self.error_rate!r}")
        _checks.seconds("cooldown", self.cooldown)

    def as_core_args(
        self,
    ) -> tuple[float | None, float, int | None, tuple[int, int | None, float, int] | None]:
        """(rate, burst, max_concurrency, adaptive) for the core."""
        burst = self.burst if self.burst is not None else max(1.0, float(self.rate or 1.0))
        adaptive = None
        if self.adaptive:
            latency = None if self.target_latency is None else _ms_at_least_1(self.target_latency)
            adaptive = (self.min_concurrency, latency, float(self.error_rate), int(self.cooldown * 1000))
        rate = None if self.rate is None else float(self.rate)
        return rate, float(burst), self.max_concurrency, adaptive


@dataclass(frozen=True)
class PriorityAging:
    """Opt-in, per queue: a pending task's priority rises by ``step`` for every ``every``
    seconds it has waited, up to ``max_priority``, so low-priority work is never starved
    forever. Workers apply it as they run (the stored priority is the effective one)."""

    every: float = 60.0
    step: int = 1
    max_priority: int = _core.PRIORITY_MAX

    def __post_init__(self) -> None:
        _checks.seconds("every", self.every, positive=True)
        if self.every < 0.01:
            raise InvalidArgument(f"every must be at least 0.01 seconds, got {self.every!r}")
        _checks.integer("step", self.step, 1, _core.PRIORITY_MAX - _core.PRIORITY_MIN)
        _checks.integer("max_priority", self.max_priority, _core.PRIORITY_MIN, _core.PRIORITY_MAX)


def _ms_at_least_1(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@dataclass(frozen=True)
class Cache:
    """A task's result cache: a completed run answers identical enqueues for ``ttl`` seconds
    (their handle is the completed task: nothing runs), and identical enqueues while a run
    is pending or running attach to that run. Identical means the same task and arguments,
    or the same ``key(*args, **kwargs)`` (a string) when ``key`` is given. Shared by every
    process on the file; an entry also ends when retention prunes its run."""

    ttl: float = 3600.0
    key: Callable[..., str] | None = None

    def __post_init__(self) -> None:
        _checks.seconds("ttl", self.ttl, positive=True)
        if self.key is not None and not callable(self.key):
            raise InvalidArgument(f"key must be a function returning a string, got {self.key!r}")

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))
