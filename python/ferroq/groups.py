"""Resource groups as Python sees them: a handle to pause, inspect and steer one group
(its circuit breaker and throttle live in the database, shared by every process), and the
events that record their changes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson

from . import _checks
from .errors import InvalidArgument
from .info import from_ms
from .policies import CircuitBreaker, Throttle

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["ResourceGroup", "Circuit", "GroupState", "Event", "CircuitState", "group_name"]

CircuitState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class GroupState:
    """A resource group as it stands now."""

    queue: str
    name: str
    paused: bool
    circuit: CircuitState
    #: Counted failures inside the breaker's window (while closed).
    recent_failures: int
    #: While open: when it turns half-open (None: open until closed by hand).
    open_until: datetime | None
    #: Openings since the breaker last closed (each doubles the next open time).
    trips: int
    #: Tokens in the rate bucket now (None: no rate limit).
    tokens: float | None
    #: The running cap now (moved by an adaptive throttle); None: no cap.
    concurrency_limit: int | None
    #: A processor's Retry-After holds the group until then.
    blocked_until: datetime | None
    running: int
    pending: int
    has_breaker: bool
    rate: float | None
    max_concurrency: int | None
    adaptive: bool

    @classmethod
    def from_core(cls, d: dict[str, Any]) -> GroupState:
        return cls(
            queue=d["queue"],
            name=d["name"],
            paused=d["paused"],
            circuit=d["circuit"],
            recent_failures=d["recent_failures"],
            open_until=from_ms(d["open_until"]),
            trips=d["trips"],
            tokens=d["tokens"],
            concurrency_limit=d["concurrency_limit"],
            blocked_until=from_ms(d["blocked_until"]),
            running=d["running"],
            pending=d["pending"],
            has_breaker=d["has_breaker"],
            rate=d["rate"],
            max_concurrency=d["max_concurrency"],
            adaptive=d["adaptive"],
        )


@dataclass(frozen=True)
class Event:
    """One recorded event. ``task_id`` is set for a task's events, ``group`` for a group's
    (and its tasks'). ``detail`` by kind (times are UTC datetimes, ISO 8601 in JSON):

    - ``failed``: ``attempt``, ``error`` (``{"type", "message", "traceback"}``);
      ``retried``: ``run_at``; ``dead``, ``cancelled``, ``completed``: nothing;
      ``progress``: ``progress`` (0..1), ``message``; ``enqueued``: ``name``;
      ``started``: ``worker``, ``attempt``.
    - ``circuit_opened``, ``circuit_half_open``, ``circuit_closed``: ``from``, ``to``,
      ``reason``; ``throttle_changed``: ``concurrency_limit``, ``previous``, ``reason``;
      ``group_paused``, ``group_resumed``, ``group_forgotten``, ``queue_paused``,
      ``queue_resumed``: nothing.
    """

    id: int
    at: datetime
    queue: str
    group: str | None
    task_id: int | None
    kind: str
    detail: dict[str, Any]

    @classmethod
    def from_core(cls, row: tuple[int, int, str, str | None, int | None, str, str | None]) -> Event:
        id_, at, queue, group, task_id, kind, detail = row
        at_dt = from_ms(at)
        assert at_dt is not None
        return cls(id_, at_dt, queue, group, task_id, kind, _detail(detail))


def _detail(raw: str | None) -> dict[str, Any]:
    """An event's detail as documented: times (keys ending in ``_at`` or ``_until``, stored
    as epoch ms) as datetimes, a failure's ``error`` as an object (files written before
    ferroq stored it as an object hold a string of JSON)."""
    detail: dict[str, Any] = orjson.loads(raw) if raw else {}
    for key, value in detail.items():
        if key.endswith(("_at", "_until")) and isinstance(value, int):
            detail[key] = from_ms(value)
    error = detail.get("error")
    if isinstance(error, str):
        try:
            detail["error"] = orjson.loads(error)
        except orjson.JSONDecodeError:
            detail["error"] = {"type": "Error", "message": error, "traceback": None}
    return detail


class Circuit:
    """The circuit breaker of one resource group: read its state, force it open or closed."""

    def __init__(self, queue: Queue, group: str) -> None:
        self._queue = queue
        self.group = group

    def __repr__(self) -> str:
        return f"Circuit({self.group!r}, state={self.state!r})"

    @property
    def state(self) -> CircuitState:
        """``"closed"``, ``"open"`` or ``"half_open"`` (as the next claim will see it)."""
        state: CircuitState = self._queue._store.group_info(self._queue.name, self.group)["circuit"]
        return state

    def open(self, duration: float | None = None, *, reason: str = "opened by hand") -> None:
        """Opens the breaker: the group's tasks stay pending. After ``duration`` seconds it
        turns half-open as usual; with no duration it stays open until ``close()``."""
        seconds = _checks.optional_seconds("duration", duration, positive=True)
        ms = None if seconds is None else max(1, int(seconds * 1000))
        self._command("open", ms, reason)

    def close(self, *, reason: str = "closed by hand") -> None:
        """Closes the breaker: the group's tasks run again."""
        self._command("close", None, reason)

    def reset(self, *, reason: str = "reset by hand") -> None:
        """Closes the breaker and forgets its failure count and open-time backoff."""
        self._command("reset", None, reason)

    def transitions(self) -> list[Event]:
        """Every recorded transition of this breaker, oldest first, with time and reason."""
        return [e for e in self._queue.events(group=self.group) if e.kind.startswith("circuit_")]

    def _command(self, command: str, duration_ms: int | None, reason: str) -> None:
        self._queue._store.circuit(self._queue.name, self.group, command, duration_ms, _checks.text("reason", reason))
        self._queue._notify()


class ResourceGroup:
    """A named pool of capacity that tasks share (an external API, a database, a model).
    Returned by ``Queue.group``; pass it (or its name) as a task's ``resource_group``."""

    def __init__(self, queue: Queue, name: str, breaker: CircuitBreaker | None, throttle: Throttle | None) -> None:
        self._queue = queue
        self.name = name
        #: The breaker declared in this process (the policy that classifies failures).
        self.breaker = breaker
        #: The throttle declared in this process.
        self.throttle = throttle

    def __repr__(self) -> str:
        return f"ResourceGroup({self.name!r}, breaker={self.breaker!r}, throttle={self.throttle!r})"

    @property
    def circuit(self) -> Circuit:
        return Circuit(self._queue, self.name)

    def state(self) -> GroupState:
        """Pause, breaker, throttle and task counts of the group, as stored now."""
        return GroupState.from_core(self._queue._store.group_info(self._queue.name, self.name))

    @property
    def paused(self) -> bool:
        return self.state().paused

    def pause(self) -> bool:
        """Stops claiming the group's tasks (they stay pending) in every worker, until
        ``resume()``; persisted. Returns False if it was already paused."""
        return bool(self._queue._store.set_group_paused(self._queue.name, self.name, True))

    def resume(self) -> bool:
        """Lets a paused group's tasks run again. Returns False if it was not paused."""
        changed = bool(self._queue._store.set_group_paused(self._queue.name, self.name, False))
        self._queue._notify()
        return changed

    def forget(self, *, force: bool = False) -> bool:
        """Deletes the group's stored settings (breaker, throttle), pause and circuit state,
        e.g. a group paused by a typo; its events stay. Raises ``InvalidTransition`` while the
        group has pending or running tasks (they would run without its limits) unless
        ``force=True``. Returns False if nothing was stored. A process that declares the group
        again (``q.group(name, breaker=...)``) stores its settings anew."""
        if not isinstance(force, bool):
            raise InvalidArgument(f"force must be a bool, got {force!r}")
        forgot = bool(self._queue._store.forget_group(self._queue.name, self.name, force))
        self._queue._groups.pop(self.name, None)
        self.breaker = self.throttle = None
        self._queue._notify()
        return forgot


def group_name(group: str | ResourceGroup) -> str:
    """A group's name, from a name or a ``ResourceGroup``."""
    return group.name if isinstance(group, ResourceGroup) else group
