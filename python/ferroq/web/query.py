"""Reading request parameters into queue calls (filters, search, bulk selections), shared by
the pages and the JSON API. Bad input is a ``BadRequest`` (400 with a message), never a 500."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request

from ..errors import FerroqError
from ..info import STATUSES, TaskInfo
from ..queue import Queue

if TYPE_CHECKING:
    from .app import Dashboard

__all__ = [
    "BadRequest",
    "NotFound",
    "Filter",
    "dashboard",
    "queue_of",
    "task_id",
    "listing",
    "bulk_count",
    "PAGE",
    "SEARCH_SCAN",
    "SCAN_IDS",
    "WINDOW",
]

#: Tasks per listing page.
PAGE = 50
#: A listing reads ids in windows of this many (``Queue.list(until_id=)``), and at most
#: SCAN_IDS of them per page: a filter that matches few tasks answers in bounded time with
#: a cursor to go on (about 35 ms for 100,000 ids, see docs/benchmarks.md).
WINDOW = 25_000
SCAN_IDS = 100_000
#: A text search (name, unique key, text in args) decodes every task it reads: fewer ids.
SEARCH_SCAN = 10_000
SEARCH_WINDOW = 2_000
FINISHED = ("completed", "dead", "cancelled")


class BadRequest(Exception):
    status = 400


class NotFound(BadRequest):
    status = 404


def dashboard(request: Request) -> Dashboard:
    return request.app.state.dashboard  # type: ignore[no-any-return]


def queue_of(request: Request) -> Queue:
    name = request.query_params.get("queue") or None
    q = dashboard(request).queue_named(name)
    if q is None:
        raise NotFound(f"no queue {name!r} in this file")
    return q


def task_id(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"no task {raw!r}")
    return int(raw)


def _int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    assert raw is not None
    if not raw.lstrip("-").isdigit() or len(raw) > 18 or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class Filter:
    """The tasks page's selection: statuses, group, name, free text."""

    statuses: tuple[str, ...] = ()
    group: str | None = None
    name: str | None = None
    text: str | None = None

    @classmethod
    def of(cls, params: Any) -> Filter:
        statuses = tuple(s for raw in params.getlist("status") for s in raw.split(",") if s)
        bad = [s for s in statuses if s not in STATUSES]
        if bad:
            raise BadRequest(f"unknown status {bad[0]!r} (one of {', '.join(STATUSES)})")
        return cls(
            statuses, params.get("group") or None, params.get("name") or None, (params.get("q") or "").strip() or None
        )

    def query(self) -> dict[str, str]:
        out = {
            "status": ",".join(self.statuses),
            "group": self.group or "",
            "name": self.name or "",
            "q": self.text or "",
        }
        return {k: v for k, v in out.items() if v}


def listing(request: Request, q: Queue, f: Filter) -> tuple[list[TaskInfo], int | None, str | None]:
    """One page (newest first, keyset by id): the tasks, the ``after`` of the next page (None
    at the end), and a note when the page stopped at its scan budget before filling."""
    after = _int(request, "after", None, 1, 2**62)
    limit = _int(request, "limit", PAGE, 1, 500)
    assert limit is not None
    if f.text is not None and f.text.isdigit() and len(f.text) < 19:
        return _by_id(q, int(f.text), f), None, None
    if f.text is None:
        return _scan(q, f, after, limit, SCAN_IDS, None)
    return _scan(q, f, after, limit, SEARCH_SCAN, (f.text or "").lower())


def _by_id(q: Queue, tid: int, f: Filter) -> list[TaskInfo]:
    try:
        t = q.get(tid)
    except FerroqError:  # no such task, or a row that cannot be read: no match
        return []
    ok = (not f.statuses or t.status in f.statuses) and f.group in (None, t.resource_group) and f.name in (None, t.name)
    return [t] if ok else []


def _matches(t: TaskInfo, needle: str) -> bool:
    if needle in t.name.lower() or (t.unique_key is not None and needle in t.unique_key.lower()):
        return True
    try:
        return needle in orjson.dumps([t.args, t.kwargs], default=str).decode().lower()
    except Exception:  # noqa: BLE001 - an unreadable payload matches no text
        return False


def _scan(
    q: Queue, f: Filter, after: int | None, limit: int, budget: int, needle: str | None
) -> tuple[list[TaskInfo], int | None, str | None]:
    """Matching tasks newest first below ``after``, reading windows of ids (``Queue.list``
    with ``until_id``) until the page is full or ``budget`` ids were read: a filter that
    matches few of a million tasks answers in bounded time, with a cursor to go on."""
    if after is None:
        newest = q.list(limit=1, newest_first=True)
        if not newest:
            return [], None, None
        after = newest[0].id + 1
    found: list[TaskInfo] = []
    top, statuses = after, list(f.statuses) or None
    window = WINDOW if needle is None else SEARCH_WINDOW
    while True:
        low = max(1, top - window)
        # A search decodes and tests every task of the window; a listing takes what it needs.
        want = window if needle is not None else limit - len(found)
        for t in q.list(
            status=statuses, group=f.group, name=f.name, limit=want, after_id=top, until_id=low, newest_first=True
        ):
            if needle is None or _matches(t, needle):
                found.append(t)
                if len(found) == limit:
                    return found, t.id, None
        if low <= 1:
            return found, None, None
        budget -= top - low
        top = low
        if budget <= 0:
            return found, top, f"read the tasks down to id {top:,} without filling the page: go on with Older"


def bulk_statuses(action: str, f: Filter) -> list[str]:
    """What a bulk action may touch: retry dead/cancelled, cancel pending, purge finished."""
    allowed = {"retry": ("dead", "cancelled"), "cancel": ("pending",), "purge": FINISHED}.get(action)
    if allowed is None:
        raise NotFound(f"no bulk action {action!r} (retry, cancel, purge)")
    statuses = list(f.statuses) if action == "purge" else (list(f.statuses) or [allowed[0]])
    if not statuses or any(s not in allowed for s in statuses):
        raise BadRequest(f"bulk {action} applies to {', '.join(allowed)} tasks: choose a status filter among them")
    if f.text is not None:
        raise BadRequest("bulk actions take the status, group and name filters, not a text search")
    return statuses


def bulk_count(q: Queue, action: str, f: Filter) -> int:
    statuses = bulk_statuses(action, f)
    if action == "cancel":
        return q.count_pending(group=f.group, name=f.name)
    return sum(q.count_finished(s, group=f.group, name=f.name) for s in statuses)
