"""The HTML pages: each rendered whole on the server (Jinja, autoescaped); the page's script
refreshes its ``data-live`` regions from the same URL when the stream says the file changed."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import UnknownTask
from ..info import STATUSES
from .query import BadRequest, Filter, dashboard, listing, queue_of, task_id
from .views import event_view, group_events, group_view, history_view, task_view, worker_view

__all__ = ["routes"]

NAV = [
    ("overview", "/", "Overview"),
    ("groups", "/groups", "Groups"),
    ("tasks", "/tasks", "Tasks"),
    ("workers", "/workers", "Workers"),
    ("events", "/events", "Events"),
]


def _render(request: Request, template: str, page: str, status_code: int = 200, **context: Any) -> Response:
    dash = dashboard(request)
    q = context.get("queue_obj") or dash.queue
    return dash.templates.TemplateResponse(
        request,
        template,
        {
            "page": page,
            "nav": NAV,
            "root": request.scope.get("root_path", "").rstrip("/"),
            "nonce": request.state.nonce,
            "read_only": dash.read_only,
            "queue": q.name,
            "queue_query": "" if q.name == dash.queue.name else q.name,
            "statuses": STATUSES,
            **context,
        },
        status_code=status_code,
    )


def _page(template: str, page: str, build: Any) -> Any:
    def handler(request: Request) -> Response:
        try:
            return _render(request, template, page, **build(request))
        except (BadRequest, UnknownTask) as e:
            status = getattr(e, "status", 404)
            return _render(request, "error.html", page, status_code=status, message=str(e))

    handler.__name__ = page
    return handler


def _overview(request: Request) -> dict[str, Any]:
    return {"queues": dashboard(request).overview()}


def _groups(request: Request) -> dict[str, Any]:
    q = queue_of(request)
    groups = []
    for g in q.groups():
        groups.append({**group_view(g), "transitions": [event_view(e) for e in group_events(q, g.name, 10)]})
    return {"queue_obj": q, "groups": groups, "paused": q.paused}


def _tasks(request: Request) -> dict[str, Any]:
    q, f = queue_of(request), Filter.of(request.query_params)
    tasks, after, note = listing(request, q, f)
    return {
        "queue_obj": q,
        "filter": f,
        "tasks": [task_view(t, dashboard(request).redact, full=False) for t in tasks],
        "next_after": after,
        "note": note,
        "query": f.query(),
    }


def _task(request: Request) -> dict[str, Any]:
    q, tid = queue_of(request), task_id(request.path_params["id"])
    info = q.get(tid)
    return {"queue_obj": q, "task": task_view(info, dashboard(request).redact), "history": history_view(q.history(tid))}


def _workers(request: Request) -> dict[str, Any]:
    q = queue_of(request)
    return {"queue_obj": q, "workers": [worker_view(w) for w in q.workers()]}


def _events(request: Request) -> dict[str, Any]:
    q = queue_of(request)
    kind = request.query_params.get("kind") or None
    events = q.latest_events(100, kinds=None if kind is None else [kind])
    return {
        "queue_obj": q,
        "events": [event_view(e) for e in reversed(events)],
        "kind": kind or "",
        "last_event_id": q.last_event_id(),
    }


def routes() -> list[Route]:
    return [
        Route("/", _page("overview.html", "overview", _overview)),
        Route("/groups", _page("groups.html", "groups", _groups)),
        Route("/tasks", _page("tasks.html", "tasks", _tasks)),
        Route("/tasks/{id}", _page("task.html", "tasks", _task)),
        Route("/workers", _page("workers.html", "workers", _workers)),
        Route("/events", _page("events.html", "events", _events)),
    ]
