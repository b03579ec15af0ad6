"""Declarative policies the queue and worker enforce."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import _checks, _core
from .errors import InvalidArgument

__all__ = ["RetryPolicy", "Retention"]


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
