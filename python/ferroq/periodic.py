"""Periodic tasks: a cron expression in a time zone, enqueued once per tick by the workers
(see ``ferroq.worker.scheduler``). Needs ``croniter`` (``pip install 'ferroq[periodic]'``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidArgument

if TYPE_CHECKING:
    from .task import TaskBase

MISSED = ("once", "skip")


def _croniter() -> Any:
    try:
        from croniter import croniter
    except ImportError:
        raise InvalidArgument("periodic tasks need croniter: pip install 'ferroq[periodic]'") from None
    return croniter


def zone(tz: str) -> ZoneInfo:
    """The time zone named ``tz``, or ``InvalidArgument``."""
    if not isinstance(tz, str):
        raise InvalidArgument(f"tz must be a time zone name such as 'Europe/Berlin', got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(f"unknown time zone {tz!r}") from None


@dataclass(frozen=True)
class Cron:
    """A cron expression in a time zone: its ticks as UTC epoch milliseconds.

    Daylight saving: a wall time the clocks skip (spring) runs once, when the clocks
    change; a wall time they repeat (autumn) runs once, the first time, unless the hour
    field is ``*`` (an every-hour schedule runs in both hours: they are different hours)."""

    expr: str
    tz: str = "UTC"
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.expr, str) or not _croniter().is_valid(self.expr) or len(self.expr.split()) != 5:
            raise InvalidArgument(f"cron must be a 5-field cron expression such as '*/5 * * * *', got {self.expr!r}")
        object.__setattr__(self, "zone", zone(self.tz))

    def _keep(self, tick: datetime) -> bool:
        """False for the second occurrence of a repeated wall time, unless every hour runs."""
        if self.expr.split()[1] == "*":
            return True
        return tick.replace(fold=0).astimezone(timezone.utc) == tick.astimezone(timezone.utc)

    def _local(self, ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).astimezone(self.zone)

    def after(self, ms: int) -> Iterator[int]:
        """The ticks strictly after ``ms``, in order."""
        it = _croniter()(self.expr, self._local(ms))
        while True:
            tick: datetime = it.get_next(datetime)
            if self._keep(tick):
                yield int(tick.timestamp() * 1000)

    def next_after(self, ms: int) -> int:
        return next(self.after(ms))

    def latest(self, ms: int) -> int:
        """The newest tick at or before ``ms`` (ticks fall on whole minutes)."""
        start = self._local(ms // 1000 * 1000) + timedelta(seconds=1)
        it = _croniter()(self.expr, start)
        while True:
            tick: datetime = it.get_prev(datetime)
            if self._keep(tick):
                return int(tick.timestamp() * 1000)


@dataclass(frozen=True)
class Schedule:
    """``task(*args, **kwargs)`` enqueued at every tick of ``cron`` (see ``Queue.schedule``)."""

    name: str
    task: TaskBase[Any, Any]
    cron: Cron
    missed: str = "once"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.missed not in MISSED:
            raise InvalidArgument(f'missed must be "once" or "skip", got {self.missed!r}')

    def unique_key(self, tick_ms: int) -> str:
        stamp = datetime.fromtimestamp(tick_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
        return f"ferroq.schedule:{self.name}:{stamp}"
