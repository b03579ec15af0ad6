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
        from croniter import croniter  # type: ignore[import-untyped]
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
        """The ticks strictly after ``ms``, in order. croniter started inside a repeated
        (autumn) hour skips the rest of it, so it starts a few hours earlier."""
        it = _croniter()(self.expr, self._local(ms - _DST_SLACK_MS))
        while True:
            tick: datetime = it.get_next(datetime)
            at = int(tick.timestamp() * 1000)
            if at > ms and self._keep(tick):
                yield at

    def next_after(self, ms: int) -> int:
        return next(self.after(ms))

    def latest(self, ms: int) -> int:
        """The newest tick at or before ``ms`` (ticks fall on whole minutes). croniter's
        ``get_prev`` can be an hour off around a DST change, so it only says where to start
        walking forward (``get_next`` is right across the change)."""
        start = self._local(ms // 1000 * 1000) + timedelta(seconds=1)
        rough = int(_croniter()(self.expr, start).get_prev(datetime).timestamp() * 1000)
        best = rough
        for tick in self.after(min(rough, ms) - _DST_SLACK_MS):
            if tick > ms:
                break
            best = tick
        return best


#: More than any DST shift (at most 2 hours anywhere).
_DST_SLACK_MS = 3 * 3600 * 1000


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


@dataclass(frozen=True)
class ScheduleState:
    """A schedule as the workers recorded it in the file (``ferroq schedules``)."""

    name: str
    task: str
    cron: str
    tz: str
    missed: str
    #: The newest tick enqueued, and its task (None: never).
    last_run: datetime | None
    last_task_id: int | None
    #: The next tick (None: croniter is not installed here).
    next_run: datetime | None
    #: When a worker last declared it.
    seen_at: datetime


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc)


def state(row: dict[str, Any], now_ms: int) -> ScheduleState:
    """A stored schedule (``Store.schedules``) with its next tick after ``now_ms``."""
    after = max(now_ms, row["declared_at"], row["last_tick"] or 0)
    try:
        next_run = _dt(Cron(row["cron"], row["tz"]).next_after(after))
    except InvalidArgument:
        next_run = None
    seen = _dt(row["seen_at"])
    assert seen is not None
    return ScheduleState(
        row["name"],
        row["task"],
        row["cron"],
        row["tz"],
        row["missed"],
        _dt(row["last_tick"]),
        row["last_task_id"],
        next_run,
        seen,
    )
