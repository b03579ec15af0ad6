"""Read-only views of stored tasks: TaskInfo, TaskError, Transition."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

import orjson

from .errors import CorruptTask

__all__ = ["TaskInfo", "TaskError", "Transition", "Status", "STATUSES"]

Status = str
"""One of ``"pending"``, ``"running"``, ``"completed"``, ``"dead"``, ``"cancelled"``."""

STATUSES: tuple[Status, ...] = ("pending", "running", "completed", "dead", "cancelled")


def from_ms(ms: int | None) -> datetime | None:
    """Epoch milliseconds (how times are stored) to an aware UTC datetime."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


#: Longest exception message and traceback stored (characters). An error is stored three
#: times (the task, its history, a "failed" event) and logged: one exception carrying a 5 MB
#: message grew the file by 30 MB and wrote a 5 MB log line.
MESSAGE_MAX = 8_192
TRACEBACK_MAX = 65_536


def clip_message(text: str) -> str:
    """``text`` if it is at most MESSAGE_MAX characters, else its start and how much was cut."""
    if len(text) <= MESSAGE_MAX:
        return text
    return f"{text[:MESSAGE_MAX]}... [{len(text) - MESSAGE_MAX:,} more characters not stored]"


def clip_traceback(text: str) -> str:
    """``text`` if it is at most TRACEBACK_MAX characters, else its start and its end (the
    innermost frames and the exception line) around a note of what was cut."""
    if len(text) <= TRACEBACK_MAX:
        return text
    head = TRACEBACK_MAX // 4
    tail = TRACEBACK_MAX - head
    return f"{text[:head]}\n... [{len(text) - TRACEBACK_MAX:,} characters not stored] ...\n{text[-tail:]}"


def storable(text: str) -> str:
    """``text`` with any lone surrogate (``"\\ud800"``) written as its escape: UTF-8, and so
    JSON and the store, cannot hold one, and an exception message may carry one (e.g. a
    file name from ``os.fsdecode``)."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class TaskError:
    """A stored processor error: exception type, message and formatted traceback (stored
    clipped to MESSAGE_MAX and TRACEBACK_MAX characters)."""

    type: str
    message: str
    traceback: str | None

    @classmethod
    def parse(cls, raw: str | None) -> TaskError | None:
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            return cls(str(data["type"]), str(data["message"]), data.get("traceback"))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return cls("Error", raw, None)

    @classmethod
    def from_exception(cls, exc: BaseException, traceback: str | None) -> TaskError:
        kind = type(exc)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        return cls(name, str(exc), traceback)

    def to_json(self) -> str:
        """The stored form: message and traceback clipped (see MESSAGE_MAX)."""
        traceback = None if self.traceback is None else storable(clip_traceback(self.traceback))
        return orjson.dumps(
            {"type": self.type, "message": storable(clip_message(self.message)), "traceback": traceback}
        ).decode()


class _Unreadable:
    """Stands in a TaskInfo for a value that could not be decoded (see ``_Decoded``)."""

    __slots__ = ("error",)

    def __init__(self, error: CorruptTask) -> None:
        self.error = error

    def __repr__(self) -> str:  # in TaskInfo's repr, and what orjson's default=str writes
        return f"<unreadable: {self.error}>"

    __str__ = __repr__


class _Decoded:
    """A TaskInfo field decoded by the serializer (args, kwargs, result): reading it raises
    the ``CorruptTask`` if its stored bytes could not be decoded."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            raise AttributeError(self.name)  # no default value for the dataclass
        value = obj.__dict__[self.name]
        if type(value) is _Unreadable:
            raise value.error
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


@dataclass(frozen=True)
class TaskInfo:
    """A snapshot of one task.

    A stored task that cannot be read (a row edited by hand outside ferroq, or a payload
    or result the queue's serializer cannot decode) has ``corrupt`` set: a ``CorruptTask``
    naming the column, with its raw bytes. Then reading ``args`` and ``kwargs`` (payload)
    or ``result`` raises that ``CorruptTask``, and a field whose column holds a value of the
    wrong type is None. ``Queue.get`` raises it instead for a row of the second kind (a
    wrong type in any column); listings (``list``, ``iter_tasks``) show every row.
    """

    id: int
    queue: str
    name: str
    status: Status
    priority: int
    resource_group: str
    attempts: int
    max_attempts: int
    run_at: datetime
    if TYPE_CHECKING:
        args: list[Any]
        kwargs: dict[str, Any]
        result: Any
    else:  # fields without a default that raise when unreadable (see _Decoded)
        args: list[Any] = _Decoded()
        kwargs: dict[str, Any] = _Decoded()
        result: Any = _Decoded()
    last_error: TaskError | None
    unique_key: str | None
    progress: float | None
    #: The message of the running (or last) run's latest ``progress(f, message)``.
    progress_message: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    corrupt: CorruptTask | None = None
    #: Why a route (``Queue.route``) sent the task to its group; None if none did.
    route: str | None = None

    @classmethod
    def from_core(cls, row: dict[str, Any], loads: Callable[[bytes], Any]) -> TaskInfo:
        corrupt = _corrupt_row(row)
        route = None
        if corrupt is None or corrupt.column != "payload":
            try:
                payload = loads(row["payload"])
                args = payload.get("args", []) if isinstance(payload, dict) else []
                kwargs = payload.get("kwargs", {}) if isinstance(payload, dict) else {}
                route = payload.get("route") if isinstance(payload, dict) else None
            except Exception as e:  # noqa: BLE001 - whatever the serializer raises
                unreadable = _Unreadable(_undecodable(row, "payload", loads, e))
                corrupt = corrupt or unreadable.error
                args = kwargs = unreadable
        else:
            args = kwargs = _Unreadable(corrupt)
        result = row["result"]
        if corrupt is not None and corrupt.column == "result":
            result = _Unreadable(corrupt)
        elif result is not None:
            try:
                result = loads(result)
            except Exception as e:  # noqa: BLE001
                result = _Unreadable(_undecodable(row, "result", loads, e))
                corrupt = corrupt or result.error
        return cls(
            id=row["id"],
            queue=row["queue"],
            name=row["name"],
            status=row["status"],
            priority=row["priority"],
            resource_group=row["resource_group"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            run_at=from_ms(row["run_at"]),  # type: ignore[arg-type]
            args=args,
            kwargs=kwargs,
            result=result,
            last_error=TaskError.parse(row["last_error"]),
            unique_key=row["unique_key"],
            progress=row["progress"],
            progress_message=row["progress_message"],
            lease_owner=row["lease_owner"],
            lease_expires_at=from_ms(row["lease_expires_at"]),
            created_at=from_ms(row["created_at"]),  # type: ignore[arg-type]
            updated_at=from_ms(row["updated_at"]),  # type: ignore[arg-type]
            started_at=from_ms(row["started_at"]),
            finished_at=from_ms(row["finished_at"]),
            corrupt=corrupt,
            route=route if isinstance(route, str) else None,
        )

    def __repr__(self) -> str:
        # The generated one would raise on an unreadable field.
        shown = ", ".join(f"{f.name}={self.__dict__[f.name]!r}" for f in fields(self))
        return f"TaskInfo({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # (args is a list: never was hashable)


def _corrupt_row(row: dict[str, Any]) -> CorruptTask | None:
    """The core's report of a column holding a value of the wrong type, as a CorruptTask;
    that column's field becomes None."""
    bad = row.get("corrupt")
    if bad is None:
        return None
    column, problem, raw = bad
    if column in row and column not in ("payload", "result"):
        row[column] = None
    return CorruptTask(f"task {row['id']} cannot be read: {problem}", row["id"], column, raw)


def _undecodable(row: dict[str, Any], column: str, loads: Callable[[bytes], Any], e: Exception) -> CorruptTask:
    owner = getattr(loads, "__self__", None)
    by = type(owner).__name__ if owner is not None else "the serializer"
    return CorruptTask(
        f"task {row['id']} cannot be read: column {column} cannot be decoded by {by}: {type(e).__name__}: {e}",
        row["id"],
        column,
        row[column],
    )


@dataclass(frozen=True)
class Transition:
    """One status change in a task's history. ``from_status`` is None for the enqueue."""

    from_status: Status | None
    to_status: Status
    at: datetime
    worker: str | None
    error: TaskError | None
