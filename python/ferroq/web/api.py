"""The JSON API (``/api/...``): what the pages show, the actions (POST only; the security
middleware has already refused cross-site and read-only requests, and the handlers check
read-only again), and the two event streams."""

from __future__ import annotations

from typing import Any, Callable

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import InvalidArgument, InvalidTransition, UnknownTask
from .query import BadRequest, Filter, NotFound, bulk_count, bulk_statuses, dashboard, listing, queue_of, task_id
from .stream import dashboard_stream, task_stream
from .views import event_view, group_events, group_view, history_view, task_view, worker_view

__all__ = ["routes", "json_response", "guarded"]

Handler = Callable[[Request], Any]


class _Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str)


def json_response(content: Any, status_code: int = 200) -> Response:
    return _Json(content, status_code=status_code)


def guarded(fn: Handler) -> Callable[[Request], Any]:
    """Turns bad input and refused operations into JSON errors: 400, 404, 409."""

    def handler(request: Request) -> Response:
        try:
            return fn(request)  # type: ignore[no-any-return]
        except BadRequest as e:
            return json_response({"error": str(e)}, e.status)
        except UnknownTask as e:
            return json_response({"error": str(e)}, 404)
        except InvalidTransition as e:
            return json_response({"error": str(e)}, 409)
        except InvalidArgument as e:
            return json_response({"error": str(e)}, 400)

    handler.__name__ = fn.__name__
    return handler


def _writable(request: Request) -> None:
    if dashboard(request).read_only:
        raise _ReadOnly()


class _ReadOnly(BadRequest):
    status = 403

    def __str__(self) -> str:
        return "the dashboard is read-only"


def _body(request: Request, raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


# -- reading ------------------------------------------------------------------------------


def api_overview(request: Request) -> Response:
    return json_response({"queues": dashboard(request).overview()})


def api_tasks(request: Request) -> Response:
    q, f = queue_of(request), Filter.of(request.query_params)
    tasks, after, note = listing(request, q, f)
    return json_response(
        {
            "tasks": [task_view(t, dashboard(request).redact, full=False) for t in tasks],
            "next_after": after,
            "note": note,
        }
    )


def api_task(request: Request) -> Response:
    q, tid = queue_of(request), task_id(request.path_params["id"])
    info = q.get(tid)
    return json_response({"task": task_view(info, dashboard(request).redact), "history": history_view(q.history(tid))})


def api_groups(request: Request) -> Response:
    q = queue_of(request)
    return json_response({"paused": q.paused, "groups": [group_view(g) for g in q.groups()]})


def api_group_transitions(request: Request) -> Response:
    q, name = queue_of(request), request.path_params["name"]
    return json_response({"events": [event_view(e) for e in group_events(q, name, 200)]})


def api_workers(request: Request) -> Response:
    return json_response({"workers": [worker_view(w) for w in queue_of(request).workers()]})


def api_events(request: Request) -> Response:
    q = queue_of(request)
    kinds = [k for raw in request.query_params.getlist("kind") for k in raw.split(",") if k] or None
    limit = request.query_params.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise BadRequest("limit must be from 1 to 1000")
    return json_response(
        {
            "events": [event_view(e) for e in q.latest_events(int(limit), kinds=kinds)],
            "last_event_id": q.last_event_id(),
        }
    )


def api_bulk_count(request: Request) -> Response:
    q, f, action = queue_of(request), Filter.of(request.query_params), request.path_params["action"]
    return json_response({"action": action, "statuses": bulk_statuses(action, f), "count": bulk_count(q, action, f)})


# -- actions --------------------------------------------------------------------------------


async def _action(request: Request, fn: Callable[[Request, dict[str, Any]], Response]) -> Response:
    from starlette.concurrency import run_in_threadpool

    raw = await request.body()

    def act(r: Request) -> Response:
        _writable(r)  # the middleware refused already; the handlers check again
        return fn(r, _body(r, raw))

    return await run_in_threadpool(guarded(act), request)


def _task_action(request: Request, body: dict[str, Any]) -> Response:
    q, tid, action = queue_of(request), task_id(request.path_params["id"]), request.path_params["action"]
    if action == "retry":
        q.requeue(tid)
    elif action == "cancel":
        q.cancel(tid)
    else:
        raise NotFound(f"no task action {action!r} (retry, cancel)")
    return json_response({"id": tid, "status": q.get(tid).status})


def _bulk_action(request: Request, body: dict[str, Any]) -> Response:
    """Everything the filter matches, once the client confirms the count it was shown (the
    typed confirmation): a count that has changed since is refused (409) with the new one."""
    q, action = queue_of(request), request.path_params["action"]
    f = Filter.of(_Params(body))
    statuses = bulk_statuses(action, f)
    count = bulk_count(q, action, f)
    if body.get("confirm") != count:
        return json_response({"error": f"confirm with the count of tasks matched: {count}", "count": count}, 409)
    if action == "retry":
        done = sum(q.retry_dead(group=f.group, name=f.name, status=s).count for s in statuses)
    elif action == "purge":
        done = q.purge(statuses, group=f.group, name=f.name)
    else:
        done = q.cancel_pending(group=f.group, name=f.name)
    return json_response({"action": action, "done": done, "matched": count})


class _Params(dict[str, Any]):
    """A JSON body read like query parameters (``Filter.of``)."""

    def getlist(self, key: str) -> list[str]:
        value = self.get(key)
        if value is None:
            return []
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise BadRequest(f"{key} must be text")
        return values


GROUP_ACTIONS = ("pause", "resume", "open", "close", "reset")


def _group_action(request: Request, body: dict[str, Any]) -> Response:
    q, name, action = queue_of(request), request.path_params["name"], request.path_params["action"]
    if action not in GROUP_ACTIONS:
        raise NotFound(f"no group action {action!r} ({', '.join(GROUP_ACTIONS)})")
    if name not in {g.name for g in q.groups()}:
        raise NotFound(f"no group {name!r} in queue {q.name!r}")
    group = q.group(name)
    if action == "pause":
        group.pause()
    elif action == "resume":
        group.resume()
    else:
        getattr(q.circuit(name), action)(reason=f"{action} from the dashboard")
    return json_response({"group": group_view(group.state())})


def _queue_action(request: Request, body: dict[str, Any]) -> Response:
    q, action = queue_of(request), request.path_params["action"]
    if action not in ("pause", "resume"):
        raise NotFound(f"no queue action {action!r} (pause, resume)")
    q.pause() if action == "pause" else q.resume()
    return json_response({"queue": q.name, "paused": q.paused})


async def task_action(request: Request) -> Response:
    return await _action(request, _task_action)


async def bulk_action(request: Request) -> Response:
    return await _action(request, _bulk_action)


async def group_action(request: Request) -> Response:
    return await _action(request, _group_action)


async def queue_action(request: Request) -> Response:
    return await _action(request, _queue_action)


# -- streams --------------------------------------------------------------------------------

_SSE_HEADERS = {"X-Accel-Buffering": "no"}


def _after(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("after")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"Last-Event-ID must be an event id, got {raw!r}")
    return int(raw)


async def stream(request: Request) -> Response:
    dash = dashboard(request)
    try:
        after = _after(request)
    except BadRequest as e:
        return json_response({"error": str(e)}, 400)
    kinds = frozenset(k for raw in request.query_params.getlist("kind") for k in raw.split(",") if k) or None
    return StreamingResponse(
        dashboard_stream(dash.tail, after, kinds, dash.timing), media_type="text/event-stream", headers=_SSE_HEADERS
    )


async def task_events(request: Request) -> Response:
    dash = dashboard(request)
    raw = request.path_params["id"]
    tid = int(raw) if raw.isdigit() and len(raw) < 19 else None
    return StreamingResponse(
        task_stream(dash.tail, tid, dash.redact, dash.timing), media_type="text/event-stream", headers=_SSE_HEADERS
    )


def task_stream_route() -> Route:
    return Route("/api/tasks/{id}/stream", task_events)


def routes() -> list[Route]:
    return [
        Route("/api/overview", guarded(api_overview)),
        Route("/api/tasks", guarded(api_tasks)),
        Route("/api/tasks/bulk/{action}", guarded(api_bulk_count)),
        Route("/api/tasks/bulk/{action}", bulk_action, methods=["POST"]),
        Route("/api/tasks/{id}", guarded(api_task)),
        task_stream_route(),
        Route("/api/tasks/{id}/{action}", task_action, methods=["POST"]),
        Route("/api/groups", guarded(api_groups)),
        Route("/api/groups/{name}/transitions", guarded(api_group_transitions)),
        Route("/api/groups/{name}/{action}", group_action, methods=["POST"]),
        Route("/api/queue/{action}", queue_action, methods=["POST"]),
        Route("/api/workers", guarded(api_workers)),
        Route("/api/events", guarded(api_events)),
        Route("/api/stream", stream),
    ]
