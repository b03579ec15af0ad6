"""Read-only views of stored tasks: TaskInfo, TaskError, Transition."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import orjson

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
        return orjson.dumps({"type": self.type, "message": storable(clip_message(self.message)),
                             "traceback": traceback}).decode()


@dataclass(frozen=True)
class TaskInfo:
    """A snapshot of one task."""

    id: int
    queue: str
    name: str
    status: Status
    priority: int
    resource_group: str
    attempts: int
    max_attempts: int
    run_at: datetime
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any
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

    @classmethod
    def from_core(cls, row: dict[str, Any], loads: Callable[[bytes], Any]) -> TaskInfo:
        payload = loads(row["payload"])
        result = row["result"]
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
            args=payload.get("args", []) if isinstance(payload, dict) else [],
            kwargs=payload.get("kwargs", {}) if isinstance(payload, dict) else {},
            result=None if result is None else loads(result),
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
        )


@dataclass(frozen=True)
class Transition:
    """One status change in a task's history. ``from_status`` is None for the enqueue."""

    from_status: Status | None
    to_status: Status
    at: datetime
    worker: str | None
    error: TaskError | None
