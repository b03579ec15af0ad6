"""``create_app``: the dashboard as an ASGI app (Starlette), to serve with ``ferroq dashboard``
or to mount in a Starlette/FastAPI/Django (ASGI) site."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..errors import InvalidArgument
from ..queue import Queue
from . import api, pages
from .security import Credentials, SecurityMiddleware
from .stream import Tail, Timing
from .views import Redact, hide_payloads, overview

__all__ = ["create_app", "Dashboard"]

HERE = Path(__file__).resolve().parent
#: How stale the overview's counts may be (seconds): "appears within 1 s".
OVERVIEW_TTL = 0.5


@dataclass(eq=False)
class Dashboard:
    """What every handler reads: the queue, the settings, the one tail of the file."""

    queue: Queue
    read_only: bool
    redact: Redact | None
    timing: Timing
    templates: Jinja2Templates
    tail: Tail
    _others: dict[str, Queue] = field(default_factory=dict)
    _overview: tuple[float, tuple[int, int], list[dict[str, Any]]] | None = None
    _overview_lock: threading.Lock = field(default_factory=threading.Lock)

    def overview(self) -> list[dict[str, Any]]:
        """Every queue's counts and figures, shared by all requests: computed again only when
        the file changed since, and then at most once per OVERVIEW_TTL seconds. Counting a
        million finished tasks reads their index (about 100 ms), and every open tab refreshes
        its overview on each change (the page asks again after the TTL: see dashboard.js)."""
        with self._overview_lock:  # one computation at a time; the others then read its result
            now, token = time.monotonic(), self.queue.change_token()
            cached = self._overview
            if cached is None or (cached[1] != token and now - cached[0] >= OVERVIEW_TTL):
                self._overview = cached = (now, token, overview(self.all_queues()))
            return cached[2]

    def queue_named(self, name: str | None) -> Queue | None:
        """The app's queue, or another queue of the same file (None if there is no such queue)."""
        if name is None or name == self.queue.name:
            return self.queue
        if name not in self._others:
            if name not in self.queue.queue_names():
                return None
            self._others[name] = self.queue._reopen(name, busy_timeout=5.0)
        return self._others[name]

    def all_queues(self) -> list[Queue]:
        names = sorted(set(self.queue.queue_names()) | {self.queue.name})
        return [q for q in (self.queue_named(n) for n in names) if q is not None]


def create_app(
    queue_or_path: Queue | str | os.PathLike[str],
    *,
    read_only: bool = False,
    auth: str | Credentials | None = None,
    redact: Redact | None = None,
    hide_args: bool = False,
    streams_only: bool = False,
    timing: Timing | None = None,
) -> Starlette:
    """The dashboard for ``queue_or_path`` (a ``Queue``, or the path of its file: the queue
    named "default"). ``read_only``: no action is possible (the handlers refuse them, 403).
    ``auth``: ``"USER:PASS"`` for HTTP Basic, or ``Credentials(token=...)``; compared in
    constant time. ``redact(task, field, value)`` replaces what is shown of a task's
    ``args``, ``kwargs``, ``result``, ``progress_message`` and ``error``; ``hide_args`` hides
    arguments and results altogether. ``streams_only``: only the task streams
    (``/api/tasks/{id}/stream``) and the client script, for a public site showing users their
    own tasks' progress (no listing, no actions). Mount it under any path: links follow
    ``root_path``."""
    if isinstance(queue_or_path, Queue):
        queue = queue_or_path
    elif isinstance(queue_or_path, (str, os.PathLike)):
        queue = Queue(queue_or_path, busy_timeout=5.0)
    else:
        raise InvalidArgument(f"create_app takes a ferroq.Queue or a path, got {queue_or_path!r}")
    if redact is not None and not callable(redact):
        raise InvalidArgument(f"redact must be a callable (task, field, value) -> value, got {redact!r}")
    if hide_args:
        redact = _chain(hide_payloads, redact)
    # Autoescape everywhere (Starlette's default only covers .html names): task data is text.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True)
    templates = Jinja2Templates(env=env)
    templates.env.filters["tojson_pretty"] = lambda v: _json(v, orjson.OPT_INDENT_2)
    templates.env.filters["tojson_compact"] = lambda v: _json(v, 0)
    dash = Dashboard(
        queue=queue,
        read_only=bool(read_only),
        redact=redact,
        timing=timing or Timing(),
        templates=templates,
        tail=Tail(queue),
    )
    static = Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static")
    routes = [api.task_stream_route(), static] if streams_only else [*pages.routes(), *api.routes(), static]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                SecurityMiddleware, credentials=Credentials.parse(auth), read_only=bool(read_only or streams_only)
            )
        ],
    )
    app.state.dashboard = dash
    return app


def _json(value: Any, option: int) -> str:
    """JSON as text for a template (so autoescaped like any text; Jinja's own tojson
    writes HTML-safe escapes that a reader would see as \\u003c)."""
    return orjson.dumps(value, default=str, option=option | orjson.OPT_NON_STR_KEYS).decode()


def _chain(first: Redact, then: Redact | None) -> Redact:
    if then is None:
        return first
    return lambda task, name, value: then(task, name, first(task, name, value))
