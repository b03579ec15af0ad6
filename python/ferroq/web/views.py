"""Queue state as plain JSON-ready dicts, for the JSON API, the pages and the streams.
Payloads pass through the ``redact`` hook here, the one place task data leaves the queue."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any, Callable

from ..groups import Event, GroupState
from ..info import STATUSES, TaskInfo, Transition
from ..observe import GroupMetrics, Percentiles, WorkerState
from ..queue import Queue

__all__ = [
    "Redact",
    "hide_payloads",
    "task_view",
    "event_view",
    "group_view",
    "worker_view",
    "metrics_view",
    "history_view",
    "overview",
    "iso",
    "group_events",
]

#: ``redact(task, field, value) -> value shown``, for ``field`` in "args", "kwargs",
#: "result", "progress_message" and "error" (the message and traceback of a failure).
Redact = Callable[[TaskInfo, str, Any], Any]

HIDDEN = "[hidden]"


def hide_payloads(task: TaskInfo, field: str, value: Any) -> Any:
    """The ``--hide-args`` redaction: arguments and results are never shown."""
    return HIDDEN if field in ("args", "kwargs", "result") and value not in (None, [], {}) else value


def iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat().replace("+00:00", "Z")


def _shown(task: TaskInfo, field: str, redact: Redact | None) -> Any:
    try:
        value = getattr(task, field)
    except Exception as e:  # noqa: BLE001 - an unreadable payload (CorruptTask) is shown as such
        return f"<unreadable: {e}>"
    if redact is not None and field != "error":
        value = redact(task, field, value)
    return value


def task_view(task: TaskInfo, redact: Redact | None = None, *, full: bool = True) -> dict[str, Any]:
    """One task; without ``full``, what a listing row needs (no payloads or traceback)."""
    error = None
    if task.last_error is not None:
        error = {
            "type": task.last_error.type,
            "message": task.last_error.message,
            "traceback": task.last_error.traceback if full else None,
        }
        if redact is not None:
            error = redact(task, "error", error)
    out: dict[str, Any] = {
        "id": task.id,
        "queue": task.queue,
        "name": task.name,
        "status": task.status,
        "priority": task.priority,
        "group": task.resource_group,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "run_at": iso(task.run_at),
        "unique_key": task.unique_key,
        "progress": task.progress,
        "progress_message": _shown(task, "progress_message", redact),
        "worker": task.lease_owner,
        "lease_expires_at": iso(task.lease_expires_at),
        "created_at": iso(task.created_at),
        "updated_at": iso(task.updated_at),
        "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at),
        "error": error,
        "corrupt": None if task.corrupt is None else str(task.corrupt),
    }
    if full:
        out.update(
            args=_shown(task, "args", redact),
            kwargs=_shown(task, "kwargs", redact),
            result=_shown(task, "result", redact),
        )
    return out


def history_view(history: list[Transition]) -> list[dict[str, Any]]:
    return [
        {
            "from": t.from_status,
            "to": t.to_status,
            "at": iso(t.at),
            "worker": t.worker,
            "error": None if t.error is None else {"type": t.error.type, "message": t.error.message},
        }
        for t in history
    ]


def event_view(e: Event) -> dict[str, Any]:
    detail = {k: iso(v) if isinstance(v, datetime) else v for k, v in e.detail.items()}
    return {
        "id": e.id,
        "at": iso(e.at),
        "queue": e.queue,
        "group": e.group,
        "task_id": e.task_id,
        "kind": e.kind,
        "detail": detail,
    }


def group_events(q: Queue, group: str, n: int) -> list[Event]:
    """The newest ``n`` of a group's own events (circuit, throttle, pause), newest first. They
    are few (a transition now and then, pruned after a week), read through their index."""
    out: list[Event] = []
    after = 0
    while True:
        page = q.events(group=group, after=after, limit=1000)
        out = (out + page)[-n:]
        if len(page) < 1000:
            return list(reversed(out))
        after = page[-1].id


def group_view(g: GroupState) -> dict[str, Any]:
    out = asdict(g)
    for key in ("open_until", "blocked_until"):
        out[key] = iso(out[key])
    return out


def worker_view(w: WorkerState) -> dict[str, Any]:
    out = asdict(w)
    for key in ("started_at", "last_seen", "stopped_at"):
        out[key] = iso(out[key])
    return out


def _percentiles(p: Percentiles) -> dict[str, float]:
    return {"count": p.count, "p50": p.p50, "p95": p.p95, "p99": p.p99, "max": p.max}


def metrics_view(m: GroupMetrics) -> dict[str, Any]:
    return {
        "group": m.group,
        "window": m.window,
        "completed": m.completed,
        "failed": m.failed,
        "dead": m.dead,
        "enqueued": m.enqueued,
        "completed_per_s": m.rate("completed"),
        "failed_per_s": m.failed / m.window,
        "wait": _percentiles(m.wait),
        "run": _percentiles(m.run),
    }


def overview(queues: list[Queue], window: float = 3600.0) -> list[dict[str, Any]]:
    """Every queue of the file: tasks per status, whether paused, and its groups' figures
    over the last ``window`` seconds."""
    out = []
    for q in queues:
        counts = q.counts()
        out.append(
            {
                "queue": q.name,
                "paused": q.paused,
                "counts": {s: counts.get(s, 0) for s in STATUSES},
                "total": sum(counts.values()),
                "metrics": [metrics_view(m) for m in q.metrics(window).values()],
            }
        )
    return out
